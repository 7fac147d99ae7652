"""An Exchange migration that meets a passing error while it verifies waits in "verifying" with its password
and finishes on the sweeper's next run; a permanent error still fails it with its reason (issue 9). The
worker's step code (migration.steps.run_migration, what the Celery task runs) against the fake EWS."""

import socket
from datetime import timedelta

import pytest
from django.urls import reverse

from migration import services, steps
from migration.models import Migration
from sync.models import MailAccount
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def exchange_account(make_account, user):
    return make_account(user, "anna@firma.test", provider_kind="exchange", username="anna")


def _verifying(user, account, url, cert_pem, auth_type="basic"):
    """A migration whose user has entered the Exchange server and password: the worker's next step verifies."""
    migration = services.start_migration(user=user, account=account)
    assert steps.run_migration(migration.pk) == "awaiting_user"
    connection = {"ews_url": url, "username": EWS_USER, "auth_type": auth_type, "ca_pem": cert_pem}
    services.submit_credentials(migration=Migration.objects.get(pk=migration.pk), connection=connection,
                                password=EWS_PASSWORD, actor="test")
    return Migration.objects.get(pk=migration.pk)


def _off(fake):
    fake.busy_every, fake.http_error, fake.reset, fake.drip_seconds = 0, None, False, 0
    fake.failures.clear()


@pytest.mark.parametrize("fault, code", [
    ("busy", "protocol"),  # ErrorServerBusy beyond EWS_RETRY_BUDGET
    ("bad_gateway", "protocol"),  # a load balancer's 502 page in front of Exchange
    ("iis_error", "protocol"),  # IIS' HTML error page in an HTTP 500
    ("store_unavailable", "protocol"),  # ErrorMailboxStoreUnavailable: the mailbox database is down
    ("reset", "unreachable"),  # the connection reset under every request
    ("slow", "response_too_slow"),  # an answer that drips beyond EWS_MAX_RESPONSE_SECONDS
])
def test_a_passing_error_keeps_the_migration_verifying_until_exchange_answers(
    client, user, exchange_account, fake_ews, settings, fault, code
):
    settings.EWS_RETRY_BUDGET, settings.EWS_MAX_RESPONSE_SECONDS = 0.3, 1
    fake_ews.deliver("inbox", subject="wartet")
    migration = _verifying(user, exchange_account, fake_ews.url, fake_ews.cert_pem)
    if fault == "busy":
        fake_ews.busy_every, fake_ews.busy_back_off_ms = 1, 50
    elif fault == "bad_gateway":
        fake_ews.http_error = (502, b"<html><body>502 Bad Gateway</body></html>")
    elif fault == "iis_error":
        fake_ews.http_error = (500, b"<html><body>Server Error in '/' Application.</body></html>")
    elif fault == "store_unavailable":
        fake_ews.failures["GetFolder"] = "ErrorMailboxStoreUnavailable"
    elif fault == "reset":
        fake_ews.reset = True
    else:
        fake_ews.drip_seconds = 0.2

    assert steps.run_migration(migration.pk) == "verifying"
    waiting = Migration.objects.get(pk=migration.pk)
    assert (waiting.status, waiting.error_code) == ("verifying", code)
    assert waiting.secret_encrypted  # the password stays for the next attempt
    client.force_login(user)
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "versucht es in einigen Minuten selbst erneut" in page

    _off(fake_ews)
    assert steps.run_migration(migration.pk) == "verifying"  # too early: its back-off has not passed
    Migration.objects.filter(pk=migration.pk).update(retry_at=waiting.retry_at - timedelta(hours=1))
    assert services.sweep_stuck_migrations() == [migration.pk]
    assert steps.run_migration(migration.pk) == "done"  # what the sweeper's re-queue runs
    done = Migration.objects.get(pk=migration.pk)
    assert done.error_code == "" and done.secret_encrypted == ""
    assert MailAccount.objects.get(pk=exchange_account.pk).engine == "v3"


@pytest.mark.parametrize("fault, code", [
    ("password", "ews_auth_failed"),
    ("mailbox_denied", "ews_mailbox_denied"),
    ("tls", "ews_tls_failed"),
    ("bad_request", "protocol"),  # an EWS error about the request itself
    ("closed_port", "unreachable"),  # nothing listens there: check server and port
    ("closed_port_auto", "unreachable"),  # the same, found by the sign-in probe before exchangelib
])
def test_a_permanent_error_still_fails_the_migration_with_its_reason(user, exchange_account, fake_ews, fault, code):
    url, cert_pem, auth_type = fake_ews.url, fake_ews.cert_pem, "basic"
    if fault == "password":
        fake_ews.password = "anders"
    elif fault == "mailbox_denied":
        fake_ews.mailbox_refusal = "ErrorAccessDenied"
    elif fault == "tls":
        cert_pem = ""
    elif fault == "bad_request":
        fake_ews.failures["GetFolder"] = "ErrorSchemaValidation"
    else:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        url = f"https://localhost:{port}/EWS/Exchange.asmx"
        auth_type = "auto" if fault == "closed_port_auto" else "basic"
    migration = _verifying(user, exchange_account, url, cert_pem, auth_type=auth_type)
    assert steps.run_migration(migration.pk) == "failed"
    failed = Migration.objects.get(pk=migration.pk)
    assert failed.error_code == code and failed.secret_encrypted == ""
