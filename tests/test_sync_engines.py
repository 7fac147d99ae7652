"""V2 polling and V3 incremental IMAP sync against a real Dovecot."""

from datetime import date, datetime, timedelta, timezone

import pytest

from migration.models import Campaign
from migration.selectors import current_campaign
from portal.devservers import make_message
from sync.models import FolderState, SyncedMessage
from sync.runs import accounts_to_sync, sync_account
from sync.tasks import sync_all_accounts

pytestmark = pytest.mark.django_db


def _switch_to_v3(account, dovecot, mailbox, *, overlap_from=None):
    from migration import handoff, services
    from migration.imap import flow
    from sync.imap.client import ImapSettings

    migration = services.start_migration(user=account.owner, account=account)
    server = ImapSettings("127.0.0.1", dovecot.tls_port, "ssl", mailbox[0])
    cursors = flow.verify(server, mailbox[1])
    from sync import crypto

    migration.connection = {"host": server.host, "port": server.port, "security": "ssl", "username": server.username}
    migration.cursors = cursors
    migration.secret_encrypted = crypto.encrypt_json({"password": mailbox[1]})
    handoff.hand_over(migration)
    account.refresh_from_db()
    return cursors


def test_it_polls_v2_by_date_and_records_the_high_water_mark(imap_account, dovecot, mailbox, mail_settings):
    when = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)
    dovecot.deliver(mailbox[0], make_message(subject="a"), make_message(subject="b"), when=when)
    assert sync_account(imap_account.pk) == 2
    assert sync_account(imap_account.pk) == 0  # the same day again: dedup
    state = FolderState.objects.get(account=imap_account, name="INBOX")
    assert state.v2_high_water == when
    imap_account.refresh_from_db()
    assert imap_account.last_sync_at is not None and imap_account.last_sync_error == ""


def test_it_stops_v2_after_the_shutdown_date(imap_account, dovecot, mailbox, mail_settings):
    campaign = current_campaign()
    Campaign.objects.filter(pk=campaign.pk).update(migrate_by=date.today() - timedelta(days=30),
                                                   v2_shutdown=date.today())
    dovecot.deliver(mailbox[0], make_message(subject="zu spät"))
    assert sync_account(imap_account.pk) == 0
    assert imap_account.pk not in accounts_to_sync()
    imap_account.refresh_from_db()
    assert imap_account.status == "stopped"
    assert not SyncedMessage.objects.filter(account=imap_account).exists()


def test_it_syncs_v3_incrementally_from_the_cursor(imap_account, dovecot, mailbox, mail_settings):
    dovecot.deliver(mailbox[0], make_message(subject="alt"), when=datetime.now(timezone.utc) - timedelta(days=30))
    sync_account(imap_account.pk)
    _switch_to_v3(imap_account, dovecot, mailbox)
    assert imap_account.engine == "v3"
    dovecot.deliver(mailbox[0], make_message(subject="neu 1"), make_message(subject="neu 2"))
    assert sync_account(imap_account.pk) == 2
    assert sync_account(imap_account.pk) == 0
    dovecot.deliver(mailbox[0], make_message(subject="neu 3"))
    assert sync_account(imap_account.pk) == 1
    state = FolderState.objects.get(account=imap_account, name="INBOX")
    assert state.last_seen_uid == 4 and state.uidnext == 5
    assert state.highestmodseq is not None  # Dovecot has CONDSTORE
    assert SyncedMessage.objects.filter(account=imap_account).count() == 4


def test_it_picks_up_mail_v2_missed_inside_the_overlap_window(imap_account, dovecot, mailbox, mail_settings):
    two_days_ago = datetime.now(timezone.utc) - timedelta(days=2)
    dovecot.deliver(mailbox[0], make_message(subject="V2 kennt"), when=two_days_ago)
    sync_account(imap_account.pk)
    # Arrives in the mailbox before the switch, V2 never polls again.
    dovecot.deliver(mailbox[0], make_message(subject="V2 verpasst"))
    _switch_to_v3(imap_account, dovecot, mailbox)
    sync_account(imap_account.pk)
    assert sorted(SyncedMessage.objects.filter(account=imap_account).values_list("subject", "imported_by")) == [
        ("V2 kennt", "v2"), ("V2 verpasst", "v3")]


def test_it_imports_an_old_message_moved_into_inbox_before_the_switch(imap_account, dovecot, mailbox, mail_settings):
    # V2 polled by date: a 2020 message moved into INBOX after its last poll is
    # below every date window. The first V3 run reads the whole folder.
    dovecot.deliver(mailbox[0], make_message(subject="schon da"))
    assert sync_account(imap_account.pk) == 1  # V2
    dovecot.deliver(mailbox[0], make_message(subject="uralt, verschoben"), when=datetime(2020, 1, 1, tzinfo=timezone.utc))
    _switch_to_v3(imap_account, dovecot, mailbox)
    assert sync_account(imap_account.pk) == 1
    assert sync_account(imap_account.pk) == 0
    assert sorted(SyncedMessage.objects.filter(account=imap_account).values_list("subject", "imported_by")) == [
        ("schon da", "v2"), ("uralt, verschoben", "v3")]


def test_it_dedupes_messages_without_message_id(imap_account, dovecot, mailbox, mail_settings):
    raw = make_message(subject="ohne ID", message_id=None, date=datetime(2026, 11, 1, tzinfo=timezone.utc))
    dovecot.deliver(mailbox[0], raw)
    sync_account(imap_account.pk)
    _switch_to_v3(imap_account, dovecot, mailbox)
    sync_account(imap_account.pk)
    keys = list(SyncedMessage.objects.filter(account=imap_account).values_list("dedup_key", flat=True))
    assert len(keys) == 1 and keys[0].startswith("sha256:")


def test_it_resyncs_by_date_when_uidvalidity_changes(imap_account, dovecot, mailbox, mail_settings):
    _switch_to_v3(imap_account, dovecot, mailbox)
    dovecot.deliver(mailbox[0], make_message(subject="eins"))
    sync_account(imap_account.pk)
    FolderState.objects.filter(account=imap_account, name="INBOX").update(uidvalidity=1)  # server renumbered
    dovecot.deliver(mailbox[0], make_message(subject="zwei"))
    sync_account(imap_account.pk)
    assert sorted(SyncedMessage.objects.filter(account=imap_account).values_list("subject", flat=True)) == ["eins", "zwei"]


def test_it_records_a_sync_error_without_losing_anything(imap_account, dovecot, mailbox, mail_settings):
    dovecot.deliver(mailbox[0], make_message(subject="da"))
    sync_account(imap_account.pk)
    dovecot.set_password(mailbox[0], "geändert")
    assert sync_account(imap_account.pk) == 0
    imap_account.refresh_from_db()
    assert imap_account.status == "error" and imap_account.last_sync_error == "auth_failed"
    assert SyncedMessage.objects.filter(account=imap_account).count() == 1


def test_it_enqueues_every_due_account(imap_account, make_account, user, settings, django_capture_on_commit_callbacks):
    make_account(user, "ohne-server@example.org")  # nothing to connect to: skipped
    from portal.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()
        with django_capture_on_commit_callbacks(execute=True):  # the runs are queued on commit
            assert sync_all_accounts() == 1
        assert conn.default_channel.client.llen("celery") == 1
