"""Push through IMAP IDLE (sync.imap.idle, manage.py imap_idle) against the real Dovecot."""

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from portal.devservers import make_message
from portal.models import Heartbeat
from sync import crypto, leases
from sync.imap import idle
from sync.models import AccountStatus, MailAccount, SyncedMessage
from sync.runs import accounts_to_sync
from tests.conftest import wait_for, worker_environment
from tests.test_sync_engines import _switch_to_v3

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent
QUICK = dict(IMAP_IDLE_CHECK_SECONDS="1", IMAP_IDLE_REFRESH_SECONDS="1", IMAP_IDLE_SECONDS="3",
             IMAP_IDLE_DEBOUNCE_SECONDS="0", IMAP_IDLE_BACKOFF_SECONDS="1", IMAP_IDLE_BACKOFF_MAX_SECONDS="2")


@pytest.fixture
def quick(settings):
    for name, value in QUICK.items():
        setattr(settings, name, int(value))
    return settings


@pytest.fixture
def v3_account(imap_account, dovecot, mailbox, mail_settings):
    _switch_to_v3(imap_account, dovecot, mailbox)
    return imap_account


def _listener(settings, dovecot, log):
    return subprocess.Popen(
        [sys.executable, "manage.py", "imap_idle", "--shard", "0/1"], cwd=ROOT,
        env=worker_environment(settings, dovecot, **QUICK), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _subjects(account):
    return set(SyncedMessage.objects.filter(account=account).values_list("subject", flat=True))


def _beat():
    return Heartbeat.objects.filter(name=idle.heartbeat_name(0, 1)).values_list("seen_at", "count").first()


def _health(client):
    return client.get("/health/").json()["checks"]["imap_idle"]


def test_new_mail_is_synced_by_push_and_a_killed_listener_is_replaced(
        v3_account, dovecot, mailbox, mail_settings, celery_worker_thread, tmp_path, client):
    # No beat runs in this test: only the listener can queue a sync.
    assert _health(client) == {"status": "missing", "shards": 0, "connections": 0, "ews_subscriptions": 0}
    log = open(tmp_path / "idle.log", "w")
    first = _listener(mail_settings, dovecot, log)
    second = None
    try:
        wait_for(lambda: (_beat() or (None, 0))[1] == 1, timeout=30)  # the IDLE connection is up
        assert _health(client) == {"status": "ok", "shards": 1, "connections": 1, "ews_subscriptions": 0}
        dovecot.deliver(mailbox[0], make_message(subject="push eins"))
        wait_for(lambda: "push eins" in _subjects(v3_account), timeout=20)

        second = _listener(mail_settings, dovecot, log)  # a standby: waits on the shard's lock
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = timezone.now()
        # The standby takes the shard and holds the account's IDLE connection.
        wait_for(lambda: (_beat() or (killed_at, 0))[0] > killed_at + timedelta(seconds=0.5) and _beat()[1] == 1,
                 timeout=30)
        dovecot.deliver(mailbox[0], make_message(subject="push zwei"))
        wait_for(lambda: "push zwei" in _subjects(v3_account), timeout=20)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()
    assert "Traceback" not in (tmp_path / "idle.log").read_text()
    Heartbeat.objects.update(seen_at=timezone.now() - timedelta(seconds=mail_settings.IMAP_IDLE_STALE_SECONDS + 1))
    assert _health(client)["status"] == "stale"


class _Recorder(idle.Listener):
    def __init__(self):
        super().__init__(0, 1)
        self.queued = []

    def _enqueue(self, account_id):
        self.queued.append(account_id)


def test_exists_queues_one_debounced_sync_and_a_dropped_connection_catches_up(v3_account, dovecot, mailbox, quick):
    listener = _Recorder()
    try:
        listener.refresh()
        conn = listener.connections[v3_account.pk]
        wait_for(lambda: conn.connected, timeout=20)
        listener.mark_due()  # the first connect made the account due (mail may have come before it)
        assert MailAccount.objects.get(pk=v3_account.pk).sync_due_at <= timezone.now()
        dovecot.deliver(mailbox[0], make_message(subject="eins"))
        wait_for(lambda: listener.queued == [v3_account.pk], timeout=20)
        dovecot.deliver(mailbox[0], make_message(subject="eins b"))
        wait_for(lambda: listener.queued == [v3_account.pk] * 2, timeout=20)
        assert conn.connects == 1  # reading the announcements left the connection in IDLE

        # Dropped by the server side: the connection comes back and the account is made due again.
        MailAccount.objects.filter(pk=v3_account.pk).update(sync_due_at=None)
        conn.client._imap.sock.shutdown(2)
        wait_for(lambda: not conn.connected, timeout=10)
        wait_for(lambda: conn.connected, timeout=20)
        listener.mark_due()
        assert MailAccount.objects.get(pk=v3_account.pk).sync_due_at is not None
        dovecot.deliver(mailbox[0], make_message(subject="zwei"))
        wait_for(lambda: listener.queued == [v3_account.pk] * 3, timeout=20)
        assert listener.connected() == 1 and conn.connects == 2
    finally:
        listener.stop()


def test_it_stops_for_accounts_that_leave_and_never_retries_a_wrong_password(v3_account, dovecot, mailbox, quick):
    listener = _Recorder()
    try:
        listener.refresh()
        conn = listener.connections[v3_account.pk]
        wait_for(lambda: conn.connected, timeout=20)
        MailAccount.objects.filter(pk=v3_account.pk).update(status=AccountStatus.RECONNECT)
        listener.refresh()
        assert listener.connections == {}
        conn.join(timeout=10)
        assert not conn.is_alive()

        MailAccount.objects.filter(pk=v3_account.pk).update(
            status=AccountStatus.ACTIVE, secret_encrypted=crypto.encrypt_json({"password": "falsch"}))
        listener.refresh()
        wrong = listener.connections[v3_account.pk]
        wrong.join(timeout=20)
        assert wrong.refused and not wrong.is_alive()
        listener.refresh()
        assert listener.connections[v3_account.pk] is wrong  # not started again with the same secret
        account = MailAccount.objects.get(pk=v3_account.pk)
        assert account.status == AccountStatus.ACTIVE and account.last_sync_error == ""  # marks nothing
        assert listener.queued == []
    finally:
        listener.stop()


def test_pushed_accounts_are_polled_at_the_longer_interval(v3_account, make_account, user, quick):
    other = make_account(user, "pop@example.com", imap_host="127.0.0.1", imap_port=993, engine="v2")
    quick.SYNC_PUSH_POLL_SECONDS = 1800
    MailAccount.objects.update(sync_due_at=None, sync_queued_at=None)
    from portal.heartbeats import record

    record(idle.heartbeat_name(0, 1), count=1)
    now = timezone.now()
    assert set(accounts_to_sync()) == {v3_account.pk, other.pk}
    pushed = MailAccount.objects.get(pk=v3_account.pk).sync_due_at
    polled = MailAccount.objects.get(pk=other.pk).sync_due_at
    assert pushed - now >= timedelta(seconds=1800 * leases.DUE_FRACTION) - timedelta(seconds=5)
    assert polled - now <= timedelta(seconds=quick.CELERY_BEAT_SYNC_SECONDS)

    # A stale listener heartbeat: its accounts are polled at the normal interval again.
    Heartbeat.objects.update(seen_at=now - timedelta(seconds=quick.IMAP_IDLE_STALE_SECONDS + 1))
    MailAccount.objects.update(sync_due_at=None, sync_queued_at=None)
    accounts_to_sync()
    assert MailAccount.objects.get(pk=v3_account.pk).sync_due_at - timezone.now() <= timedelta(
        seconds=quick.CELERY_BEAT_SYNC_SECONDS)


def test_notify_watches_the_other_synced_folders_on_one_connection(v3_account, dovecot, mailbox, quick):
    # RFC 5465 against the real Dovecot: mail filed into another folder triggers a sync too.
    for folder in ("Kunden", "Drafts"):
        dovecot.deliver(mailbox[0], make_message(subject=f"alt {folder}"), folder=folder)
    listener = _Recorder()
    try:
        listener.refresh()
        conn = listener.connections[v3_account.pk]
        wait_for(lambda: conn.connected and conn.watched is not None, timeout=20)
        assert conn.client.has_capability("NOTIFY")  # Dovecot 2.3 offers it once signed in
        assert conn.watched == ["Kunden"]  # the folders the sync reads; never Drafts (autosaves)
        dovecot.deliver(mailbox[0], make_message(subject="gefiltert"), folder="Kunden")
        wait_for(lambda: listener.queued == [v3_account.pk], timeout=20)
        dovecot.deliver(mailbox[0], make_message(subject="Entwurf"), folder="Drafts")
        dovecot.deliver(mailbox[0], make_message(subject="eingang"), folder="INBOX")
        wait_for(lambda: listener.queued == [v3_account.pk] * 2, timeout=20)  # INBOX once; Drafts nothing
        with dovecot.client(mailbox[0]) as other:  # an expunge in a watched folder is no new mail
            other.select_folder("Kunden")
            other.delete_messages(other.search("ALL"))
            other.expunge()
        dovecot.deliver(mailbox[0], make_message(subject="noch einer"), folder="INBOX")
        # The server sends its announcements in order: once the INBOX one is seen, the expunge's was too.
        wait_for(lambda: len(listener.queued) >= 3, timeout=20)
        assert listener.queued == [v3_account.pk] * 3
        assert conn.connects == 1
    finally:
        listener.stop()


@pytest.fixture
def dovecot_without_notify():
    from portal.devservers import Dovecot

    server = Dovecot({}, pool_size=2, extra_config="imap_capability = IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE\n")
    yield server.start()
    server.stop()


def test_a_server_without_notify_keeps_the_plain_inbox_idle(dovecot_without_notify, make_account, user, settings,
                                                            quick):
    server = dovecot_without_notify
    settings.EGRESS_ALLOW_NETWORKS, settings.MAIL_TLS_CA_FILE = ["127.0.0.1/32"], str(server.cert_path)
    address, password = server.take_mailbox()
    server.deliver(address, make_message(subject="alt"), folder="Kunden")
    account = make_account(user, address, imap_host="127.0.0.1", imap_port=server.tls_port, imap_security="ssl",
                           username=address, secret_encrypted=crypto.encrypt_json({"password": password}))
    _switch_to_v3(account, server, (address, password))
    listener = _Recorder()
    try:
        listener.refresh()
        conn = listener.connections[account.pk]
        wait_for(lambda: conn.connected, timeout=20)
        assert not conn.client.has_capability("NOTIFY")
        server.deliver(address, make_message(subject="gefiltert"), folder="Kunden")  # waits for the poll
        server.deliver(address, make_message(subject="eingang"), folder="INBOX")
        wait_for(lambda: len(listener.queued) >= 1, timeout=20)
        # The IDLE that announced it began after the NOTIFY decision: plain IDLE, nothing else watched.
        assert conn.watched is None and listener.queued == [account.pk] and conn.connects == 1
    finally:
        listener.stop()


def test_the_shard_lock_survives_django_closing_its_connection():
    """Each heartbeat calls close_old_connections(), which closes Django's connection once it is older
    than CONN_MAX_AGE: the shard's lock lives on a connection of its own, so the listener keeps its shard."""
    owner, rival = idle.lock_connection(), idle.lock_connection()
    try:
        assert idle.claim_shard(7, owner)
        connection.close()  # what close_old_connections() does past CONN_MAX_AGE
        assert idle.still_owner(7, owner)
        assert not idle.claim_shard(7, rival)  # a standby still finds it taken
        owner.close()  # the process dies: its session ends, and the lock with it
        assert not idle.still_owner(7, owner)
        assert idle.claim_shard(7, rival)
    finally:
        owner.close()
        rival.close()


def test_a_listener_opens_its_connections_in_a_ramp(v3_account, quick):
    """Connections start IMAP_IDLE_CONNECTS_PER_SECOND apart, not in one burst (the bench's 2,000 at once
    ran past the connect timeout)."""
    quick.IMAP_IDLE_CONNECTS_PER_SECOND = 4
    for number in range(3):
        copy = MailAccount.objects.get(pk=v3_account.pk)
        copy.pk, copy.address = None, f"copy{number}@example.com"
        copy.save()
    listener = idle.Listener(0, 1)
    try:
        listener.refresh()
        assert sorted(conn.start_after for conn in listener.connections.values()) == [0, 0.25, 0.5, 0.75]
        assert wait_for(lambda: sum(conn.connects for conn in listener.connections.values()) == 4, timeout=20)
    finally:
        listener.stop()
