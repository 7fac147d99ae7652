"""A task delivered twice, or again after a crash, does no harm."""

from datetime import timedelta

import pytest
from django.utils import timezone

from migration import services, steps
from migration.models import Migration, MigrationEvent
from migration.selectors import current_campaign
from portal.devservers import make_message
from sync import crypto
from sync.models import FolderState, SyncedMessage
from sync.runs import sync_account

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def verifying_migration(user, imap_account, mailbox, dovecot, mail_settings):
    """A migration whose user has entered the right password."""
    migration = services.start_migration(user=user, account=imap_account)
    steps.run_migration(migration.pk)  # detection, then it waits for the user
    migration.refresh_from_db()
    assert migration.status == "awaiting_user"
    from sync.imap.client import ImapSettings

    server = ImapSettings("127.0.0.1", dovecot.tls_port, "ssl", mailbox[0])
    return services.submit_imap_credentials(migration=migration, server=server, password=mailbox[1], actor="test")


def test_it_finishes_once_when_the_task_runs_twice(verifying_migration, imap_account, dovecot, mailbox):
    dovecot.deliver(mailbox[0], make_message(subject="eins"))
    assert steps.run_migration(verifying_migration.pk) == "done"
    assert steps.run_migration(verifying_migration.pk) == "done"  # redelivered
    assert MigrationEvent.objects.filter(migration=verifying_migration, to_status="done").count() == 1
    sync_account(imap_account.pk)
    sync_account(imap_account.pk)
    assert SyncedMessage.objects.filter(account=imap_account, subject="eins").count() == 1


def test_it_resumes_a_handoff_that_crashed_before_done(verifying_migration, imap_account):
    # The worker died right after the handoff committed, before "done".
    from migration import handoff

    services.transition(verifying_migration, to="handing_over", reason="test",
                        cursors={"INBOX": {"uidvalidity": 1, "uidnext": 1, "highestmodseq": None}})
    migration = Migration.objects.get(pk=verifying_migration.pk)
    assert handoff.hand_over(migration) is True
    assert handoff.hand_over(migration) is False  # a second handoff changes nothing
    assert steps.run_migration(migration.pk) == "done"
    events = list(MigrationEvent.objects.filter(migration=migration).values_list("to_status", "reason"))
    assert events[-1] == ("done", "already on V3")
    assert FolderState.objects.filter(account=imap_account).count() == 1


def test_it_does_not_hand_over_a_migration_cancelled_while_verifying(verifying_migration, imap_account):
    stale = Migration.objects.get(pk=verifying_migration.pk)
    services.cancel_migration(migration=Migration.objects.get(pk=stale.pk), actor="test")
    with pytest.raises(services.TransitionConflict):
        services.transition(stale, to="handing_over", reason="late worker")
    imap_account.refresh_from_db()
    assert imap_account.engine == "v2"


def _queued_migration_ids(redis):
    import json

    ids = []
    for raw in redis.lrange("celery", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "migration.tasks.run_migration":
            ids.append(json.loads(__import__("base64").b64decode(message["body"]))[0][0])
    return ids


def test_it_sweeps_stuck_migrations_back_into_the_queue(verifying_migration, settings):
    from portal.celery import app

    settings.MIGRATION_STUCK_SECONDS = 60
    with app.connection_for_write() as conn:
        redis = conn.default_channel.client
        redis.flushdb()
        assert services.sweep_stuck_migrations() == []  # fresh: not stuck
        Migration.objects.filter(pk=verifying_migration.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
        assert services.sweep_stuck_migrations() == [verifying_migration.pk]
        assert _queued_migration_ids(redis) == [verifying_migration.pk]  # on the real broker
        assert services.sweep_stuck_migrations() == []  # claimed: not re-queued again at once
        assert _queued_migration_ids(redis) == [verifying_migration.pk]


def test_a_long_verify_keeps_beating_and_is_not_swept(verifying_migration, settings, monkeypatch):
    settings.MIGRATION_STUCK_SECONDS = 60
    Migration.objects.filter(pk=verifying_migration.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
    services.heartbeat(Migration.objects.get(pk=verifying_migration.pk))
    assert services.sweep_stuck_migrations() == []  # alive: no second, parallel verify

    beats = []
    real = services.heartbeat
    monkeypatch.setattr(services, "heartbeat", lambda migration: beats.append(migration.status) or real(migration))
    assert steps.run_migration(verifying_migration.pk) == "done"
    assert beats and set(beats) == {"verifying"}  # once per folder while verifying


def test_it_never_sweeps_migrations_that_wait_for_the_user(user, imap_account, settings):
    migration = services.start_migration(user=user, account=imap_account)
    steps.run_migration(migration.pk)
    Migration.objects.filter(pk=migration.pk).update(updated_at=timezone.now() - timedelta(days=1))
    assert services.sweep_stuck_migrations() == []


def test_it_rejects_illegal_transitions(user, make_account):
    account = make_account(user, "x@gmx.de")
    migration = Migration.objects.create(account=account, user=user, campaign=current_campaign(), provider_kind="imap")
    with pytest.raises(services.TransitionConflict):
        services.transition(migration, to="done")
    assert Migration.objects.get(pk=migration.pk).status == "pending"
    assert not MigrationEvent.objects.filter(migration=migration).exists()


def test_it_keeps_no_secret_in_events_or_task_arguments(verifying_migration, mailbox):
    password = mailbox[1]
    migration = Migration.objects.get(pk=verifying_migration.pk)
    assert password not in migration.secret_encrypted
    assert crypto.decrypt_json(migration.secret_encrypted) == {"password": password}
    steps.run_migration(migration.pk)
    for event in MigrationEvent.objects.filter(migration=migration):
        assert password not in f"{event.reason} {event.actor}"
    from migration.tasks import run_migration

    # Tasks carry ids only: the broker never sees a credential.
    message = run_migration.s(migration.pk)
    assert message.args == (migration.pk,)
