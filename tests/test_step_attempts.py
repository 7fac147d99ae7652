"""Every migration step has a bounded number of attempts with a back-off between them.

A step that keeps raising something nobody expected (a server whose STATUS
answer lacks UIDVALIDITY), and a verify that keeps waiting for a Microsoft
outage, end failed after MIGRATION_STEP_ATTEMPTS attempts with a translated
reason, their credentials cleared and the number of logins bounded; the
sweeper respects the back-off; the logs never carry the password.
"""

import logging
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone, translation

from migration import errors, services, steps
from migration.models import Migration
from sync.imap.client import ImapSettings
from tests.fakes.imap_proxy import RewritingImapProxy, drop_uidvalidity
from tests.fakes.microsoft_fixtures import fake_microsoft_server, microsoft, ms_account, sign_in  # noqa: F401

pytestmark = pytest.mark.django_db

ATTEMPTS = 3


@pytest.fixture
def bounded(settings):
    settings.MIGRATION_STEP_ATTEMPTS = ATTEMPTS
    settings.MIGRATION_RETRY_SECONDS = 60
    settings.MIGRATION_RETRY_MAX_SECONDS = 100
    return settings


@pytest.fixture
def no_uidvalidity(dovecot):
    proxy = RewritingImapProxy(dovecot, drop_uidvalidity)
    yield proxy
    proxy.close()


def _backoff_passes(migration_id: int) -> None:
    """As if the back-off had passed (the tests assert counts, never wait)."""
    Migration.objects.filter(pk=migration_id).update(retry_at=timezone.now() - timedelta(seconds=1))


def _verifying_on(proxy, user, account, mailbox) -> Migration:
    migration = services.start_migration(user=user, account=account)
    assert steps.run_migration(migration.pk) == "awaiting_user"
    return services.submit_imap_credentials(
        migration=Migration.objects.get(pk=migration.pk), password=mailbox[1], actor="test",
        server=ImapSettings("127.0.0.1", proxy.port, "ssl", mailbox[0]),
    )


def test_it_fails_after_bounded_attempts_when_status_lacks_uidvalidity(
    bounded, no_uidvalidity, user, imap_account, mailbox, mail_settings, client, caplog
):
    caplog.set_level(logging.DEBUG)
    migration = _verifying_on(no_uidvalidity, user, imap_account, mailbox)
    delays = []
    for attempt in range(1, ATTEMPTS):
        assert steps.run_migration(migration.pk) == "verifying"
        waiting = Migration.objects.get(pk=migration.pk)
        assert (waiting.step_attempts, waiting.error_code) == (attempt, "internal_error")
        assert waiting.secret_encrypted  # it tries again with the same password
        assert no_uidvalidity.logins == attempt
        delays.append((waiting.retry_at - waiting.updated_at).total_seconds())
        # Neither an early delivery nor the sweeper goes before the back-off has passed.
        assert steps.run_migration(migration.pk) == "verifying"
        Migration.objects.filter(pk=migration.pk).update(updated_at=timezone.now() - timedelta(days=1))
        assert services.sweep_stuck_migrations() == []
        assert no_uidvalidity.logins == attempt
        _backoff_passes(migration.pk)
        assert services.sweep_stuck_migrations() == [migration.pk]
    assert delays == [60, 100]  # doubling, capped at MIGRATION_RETRY_MAX_SECONDS

    assert steps.run_migration(migration.pk) == "failed"
    failed = Migration.objects.get(pk=migration.pk)
    assert failed.error_code == "internal_error" and failed.secret_encrypted == ""
    event = failed.events.last()
    assert (event.from_status, event.to_status) == ("verifying", "failed")
    assert "KeyError" in event.reason and "cursor_of" in event.reason  # for support: what and where
    # Nothing logs in again: the sweeper leaves a failed migration alone.
    Migration.objects.filter(pk=migration.pk).update(updated_at=timezone.now() - timedelta(days=1))
    assert services.sweep_stuck_migrations() == []
    assert steps.run_migration(migration.pk) == "failed"
    assert no_uidvalidity.logins == ATTEMPTS

    logged = caplog.text
    assert mailbox[1] not in logged  # the password is a canary: in no log line, at any level
    assert logged.count("failed unexpectedly") == ATTEMPTS and "KeyError" in logged
    client.force_login(user)
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "unerwarteter Fehler" in page and "Zugangsdaten wurden gelöscht" in page
    assert mailbox[1] not in page
    with translation.override("en"):
        assert "unexpected error" in str(errors.message_for("internal_error"))


def test_the_page_says_the_portal_tries_again_while_a_step_waits_after_an_unexpected_error(
    bounded, no_uidvalidity, user, imap_account, mailbox, mail_settings, client
):
    migration = _verifying_on(no_uidvalidity, user, imap_account, mailbox)
    assert steps.run_migration(migration.pk) == "verifying"
    client.force_login(user)
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "unerwarteter Fehler aufgetreten. Das Portal versucht es in einigen Minuten selbst erneut" in page


def test_a_step_whose_worker_died_on_every_attempt_fails_instead_of_running_again(
    bounded, no_uidvalidity, user, imap_account, mailbox, mail_settings, caplog
):
    migration = _verifying_on(no_uidvalidity, user, imap_account, mailbox)
    # ATTEMPTS attempts were counted and none reported back (a worker killed each time).
    Migration.objects.filter(pk=migration.pk).update(step_attempts=ATTEMPTS)
    assert steps.run_migration(migration.pk) == "failed"
    failed = Migration.objects.get(pk=migration.pk)
    assert failed.error_code == "internal_error" and failed.secret_encrypted == ""
    assert "worker lost" in failed.events.last().reason
    assert no_uidvalidity.logins == 0


def test_a_verify_waiting_for_a_microsoft_outage_gets_bounded_retries_then_says_what_to_do(
    bounded, client, user, ms_account, microsoft, caplog
):
    caplog.set_level(logging.DEBUG)
    migration = services.start_migration(user=user, account=ms_account)
    steps.run_migration(migration.pk)
    client.force_login(user)
    microsoft.graph_always_throttled = (503, "0")  # an outage that outlasts every attempt
    sign_in(client, microsoft, migration)
    graph_calls = []
    for attempt in range(1, ATTEMPTS + 1):
        start = len(microsoft.requests)
        status = steps.run_migration(migration.pk)
        graph_calls.append(len([r for r in microsoft.requests[start:] if r["path"].startswith("/v1.0/")]))
        if attempt < ATTEMPTS:
            assert status == "verifying"
            waiting = Migration.objects.get(pk=migration.pk)
            assert waiting.error_code == "ms_unreachable" and waiting.secret_encrypted
            assert services.sweep_stuck_migrations() == []  # its back-off first
            _backoff_passes(migration.pk)
            assert services.sweep_stuck_migrations() == [migration.pk]
    assert status == "failed"
    assert all(graph_calls) and len(graph_calls) == ATTEMPTS  # every attempt asked Graph; none after the last
    failed = Migration.objects.get(pk=migration.pk)
    assert failed.error_code == "retries_exhausted" and failed.secret_encrypted == ""  # the tokens are gone
    assert "ms_unreachable" in failed.events.last().reason  # support sees what it waited for
    Migration.objects.filter(pk=migration.pk).update(updated_at=timezone.now() - timedelta(days=1))
    assert services.sweep_stuck_migrations() == []

    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "nach mehreren Versuchen beendet" in page and "Erneut versuchen" in page
    with translation.override("en"):
        assert "try again in about an hour" in str(errors.message_for("retries_exhausted")).lower()
    # The user's retry starts over with fresh attempts.
    retried = services.retry_migration(migration=failed, actor="test")
    assert (retried.status, retried.step_attempts, retried.retry_at) == ("awaiting_user", 0, None)
