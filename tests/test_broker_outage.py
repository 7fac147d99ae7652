"""Requests during a broker outage: a request whose row was committed reports success although its
task could not be queued, the failure is logged, and the periodic sweeps pick the work up."""

import logging
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from kombu import pools

from migration import services
from migration.models import Migration, Status
from migration.selectors import current_campaign
from portal.celery import app
from portal.devservers import free_port
from sync.models import MailAccount
from sync.selectors import accounts_due_for_sync
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def broker_unreachable():
    """This process publishes to a Redis port where nothing listens (the worker keeps its own connection)."""
    saved = app.amqp._producer_pool
    app.amqp._producer_pool = pools.producers[app.connection_for_write(f"redis://127.0.0.1:{free_port()}/0")]
    try:
        yield
    finally:
        app.amqp._producer_pool = saved


def _queue_failures(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sync.queue" and r.levelno == logging.ERROR]


def _sweep_when_stuck(migration_id: int) -> None:
    # As if MIGRATION_STUCK_SECONDS had passed; then the periodic sweep runs.
    Migration.objects.filter(pk=migration_id).update(updated_at=timezone.now() - timedelta(days=1))
    assert services.sweep_stuck_migrations() == [migration_id]


def test_a_start_during_a_broker_outage_succeeds_and_the_sweeper_runs_it_to_done(
    client, user, imap_account, mailbox, mail_settings, celery_worker_thread, caplog
):
    client.force_login(user)
    with broker_unreachable():
        response = client.post(reverse("migration-start", args=[imap_account.pk]))
    migration = Migration.objects.get(account=imap_account)
    assert response.status_code == 302 and response.url == reverse("migration-detail", args=[migration.pk])
    assert client.get(response.url).status_code == 200  # the migration's page, not an error page
    assert migration.status == Status.PENDING  # never queued: no worker has seen it
    [logged] = _queue_failures(caplog)
    assert logged.startswith(f"Could not queue migration {migration.pk}: the broker failed (OperationalError")
    assert logged.endswith("the periodic sweep picks it up")

    _sweep_when_stuck(migration.pk)  # the broker is back
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status == Status.AWAITING_USER, timeout=60)

    with broker_unreachable():
        response = client.post(reverse("migration-credentials", args=[migration.pk]), {
            "address": imap_account.address, "password": mailbox[1], "host": "127.0.0.1",
            "port": imap_account.imap_port, "security": "ssl", "username": imap_account.address,
        })
    assert response.status_code == 302
    assert Migration.objects.get(pk=migration.pk).status == Status.VERIFYING
    assert len(_queue_failures(caplog)) == 2

    _sweep_when_stuck(migration.pk)
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status == Status.DONE, timeout=60)
    assert MailAccount.objects.get(pk=imap_account.pk).engine == "v3"
    assert mailbox[1] not in caplog.text


def test_a_retry_during_a_broker_outage_succeeds_and_waits_for_the_sweeper(client, user, make_account, caplog):
    account = make_account(user, "anna@gmx.de", imap_host="imap.gmx.net")
    migration = Migration.objects.create(account=account, user=user, campaign=current_campaign(),
                                         provider_kind="imap", status=Status.FAILED, error_code="auth_failed")
    client.force_login(user)
    with broker_unreachable():
        response = client.post(reverse("migration-retry", args=[migration.pk]))
    assert response.status_code == 302
    assert Migration.objects.get(pk=migration.pk).status == Status.PENDING  # nothing detected yet: from the start
    [logged] = _queue_failures(caplog)
    assert logged.startswith(f"Could not queue migration {migration.pk}:")
    _sweep_when_stuck(migration.pk)


def test_a_staff_retry_during_a_broker_outage_is_done_and_logged(admin_client, user, make_account, caplog):
    account = make_account(user, "anna@gmx.de", imap_host="imap.gmx.net")
    migration = Migration.objects.create(account=account, user=user, campaign=current_campaign(),
                                         provider_kind="imap", status=Status.FAILED, error_code="auth_failed")
    with broker_unreachable():
        response = admin_client.post(reverse("admin:migration_migration_changelist"), {
            "action": "retry", "_selected_action": [migration.pk]}, follow=True)
    assert response.status_code == 200 and "1 ausgeführt, 0 übersprungen" in response.content.decode()
    assert Migration.objects.get(pk=migration.pk).status == Status.PENDING
    assert len(_queue_failures(caplog)) == 2  # the migration's task and the mail telling its user, each logged


def test_a_new_password_during_a_broker_outage_is_saved_and_the_fan_out_syncs_the_account(
    client, user, make_account, caplog
):
    from sync import crypto

    account = make_account(user, "anna@gmx.de", imap_host="imap.gmx.net", imap_port=993, engine="v3",
                           status="reconnect", last_sync_error="auth_failed",
                           secret_encrypted=crypto.encrypt_json({"password": "alt"}))
    client.force_login(user)
    with broker_unreachable():
        response = client.post(reverse("account-new-password", args=[account.pk]), {"password": "kanarienvogel-7"})
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.status == "active" and crypto.decrypt_json(account.secret_encrypted)["password"] == "kanarienvogel-7"
    assert [f"account {account.pk}" in m for m in _queue_failures(caplog)] == [True]
    assert "kanarienvogel-7" not in caplog.text
    assert account in accounts_due_for_sync(v2_running=True)  # beat's next fan-out queues its run
