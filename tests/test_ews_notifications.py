"""Exchange push (sync.exchange.push in the listener of sync.imap.idle): pull subscriptions against the fake EWS."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.heartbeats import record
from sync import leases
from sync.exchange import client as ews
from sync.exchange.push import PUSH_UNSUPPORTED
from sync.imap import idle
from sync.models import FolderState, MailAccount, SyncedMessage
from sync.runs import accounts_to_sync, sync_account
from tests.conftest import wait_for
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def quick(settings):
    settings.EWS_PULL_SECONDS = 1
    settings.IMAP_IDLE_DEBOUNCE_SECONDS = 0
    settings.IMAP_IDLE_BACKOFF_SECONDS, settings.IMAP_IDLE_BACKOFF_MAX_SECONDS = 1, 2
    settings.IMAP_IDLE_CHECK_SECONDS = 1
    return settings


def _exchange_account(make_account, user, fake_ews, address="anna@firma.test"):  # noqa: F811
    """A V3 Exchange account right after the handoff (cursors from verify, as in tests/test_ews.py)."""
    server = ews.EwsSettings(url=fake_ews.url, username=EWS_USER, address=address, auth_type="basic",
                             ca_pem=fake_ews.cert_pem)
    account = make_account(user, address, provider_kind="exchange", engine="v3")
    ews.apply_to_account(account, server=server, password=EWS_PASSWORD)
    account.save()
    for name, cursor in ews.verify(server, EWS_PASSWORD).items():
        FolderState.objects.create(account=account, name=name, ews_sync_state=cursor["ews_sync_state"])
    return account


@pytest.fixture
def account(make_account, user, fake_ews, quick):  # noqa: F811
    found = _exchange_account(make_account, user, fake_ews)
    fake_ews.calls.clear()
    return found


class _Recorder(idle.Listener):
    def __init__(self):
        super().__init__(0, 1)
        self.queued = []

    def _enqueue(self, account_id):
        self.queued.append(account_id)


def _subjects(account):
    return set(SyncedMessage.objects.filter(account=account).values_list("subject", flat=True))


def test_new_mail_reaches_the_crm_by_pull_notification_without_a_poll(account, fake_ews, celery_worker_thread,  # noqa: F811
                                                                      client):
    # No beat runs: only the listener's trigger can queue a sync.
    listener = idle.Listener(0, 1)
    try:
        listener.refresh()
        watch = listener.connections[account.pk]
        wait_for(lambda: watch.connected, timeout=20)
        listener.beat()
        assert client.get("/health/").json()["checks"]["imap_idle"] == {
            "status": "ok", "shards": 1, "connections": 0, "ews_subscriptions": 1}
        assert fake_ews.calls.count("Subscribe") == 1 and len(fake_ews.notify.subscriptions) == 1

        fake_ews.deliver("inbox", subject="push eins")
        wait_for(lambda: "push eins" in _subjects(account), timeout=20)
        fake_ews.deliver("inbox", subject="push zwei")
        wait_for(lambda: "push zwei" in _subjects(account), timeout=20)
        assert listener.enqueued == 2  # one run per new message, nothing else queued
        assert watch.connects == 1 and "GetEvents" in fake_ews.calls
    finally:
        listener.stop()
    assert "Unsubscribe" in fake_ews.calls and fake_ews.notify.subscriptions == {}


def test_an_expired_subscription_is_renewed_and_the_gap_is_caught_up(account, fake_ews):  # noqa: F811
    listener = _Recorder()
    try:
        listener.refresh()
        watch = listener.connections[account.pk]
        wait_for(lambda: watch.connected, timeout=20)
        sync_account(account.pk)  # the first run after the handoff
        listener.mark_due()
        MailAccount.objects.filter(pk=account.pk).update(sync_due_at=None)

        with fake_ews._lock:
            fake_ews.notify.expire()  # Exchange dropped it (Timeout, a restart, a mailbox move)
        fake_ews.deliver("inbox", subject="in der Lücke")  # no subscription sees this one
        wait_for(lambda: watch.resubscribed == 1, timeout=20)
        assert listener.queued == []
        listener.mark_due()  # the resubscribe made the account due: the fan-out runs it at once
        assert MailAccount.objects.get(pk=account.pk).sync_due_at <= timezone.now()
        assert account.pk in accounts_to_sync()
        sync_account(account.pk)
        assert "in der Lücke" in _subjects(account)

        fake_ews.deliver("inbox", subject="danach")
        wait_for(lambda: listener.queued == [account.pk], timeout=20)
        sync_account(account.pk)
        assert {"in der Lücke", "danach"} <= _subjects(account)
        assert watch.connects == 1 and len(fake_ews.notify.subscriptions) == 1
        assert SyncedMessage.objects.filter(account=account).count() == len(_subjects(account))  # none twice
    finally:
        listener.stop()


def test_a_server_without_notifications_keeps_the_account_polling(account, fake_ews, make_account, user,  # noqa: F811
                                                                  quick):
    fake_ews.notify.enabled = False
    listener = _Recorder()
    try:
        listener.refresh()
        watch = listener.connections[account.pk]
        watch.join(timeout=20)
        assert not watch.is_alive() and watch.unsupported == PUSH_UNSUPPORTED
        listener.refresh()  # records the code; the account leaves the shard
        assert MailAccount.objects.get(pk=account.pk).push_error == PUSH_UNSUPPORTED
        assert listener.connections == {}
        listener.refresh()
        assert listener.connections == {} and fake_ews.calls.count("Subscribe") == 1  # not asked again
    finally:
        listener.stop()

    # A live listener: pushed accounts are polled at the longer interval, this one at the normal one.
    pushed = _exchange_account(make_account, user, fake_ews, address="bernd@firma.test")
    quick.SYNC_PUSH_POLL_SECONDS = 1800
    MailAccount.objects.update(sync_due_at=None, sync_queued_at=None)
    record(idle.heartbeat_name(0, 1), count=0)
    now = timezone.now()
    assert set(accounts_to_sync()) == {account.pk, pushed.pk}
    assert MailAccount.objects.get(pk=pushed.pk).sync_due_at - now >= timedelta(
        seconds=1800 * leases.DUE_FRACTION) - timedelta(seconds=5)
    assert MailAccount.objects.get(pk=account.pk).sync_due_at - now <= timedelta(seconds=quick.CELERY_BEAT_SYNC_SECONDS)

    # New connection settings (a re-connect) let push try again.
    refreshed = MailAccount.objects.get(pk=account.pk)
    ews.apply_to_account(refreshed, server=ews.settings_of(refreshed), password=EWS_PASSWORD)
    refreshed.save()
    assert MailAccount.objects.get(pk=account.pk).push_error == ""


FORGED_IGNORED = (
    # An event type exchangelib does not know, and a change of an item's flags: neither is new mail.
    '<t:ChangedSomehowEvent><t:Watermark>{given}</t:Watermark></t:ChangedSomehowEvent>',
    '<t:ModifiedEvent><t:Watermark>{given}</t:Watermark><t:TimeStamp>2026-01-01T00:00:00Z</t:TimeStamp>'
    '<t:ItemId Id="AAMk00000001" ChangeKey="ck"/><t:ParentFolderId Id="AQMkF-inbox" ChangeKey="ck"/>'
    "<t:UnreadCount>0</t:UnreadCount></t:ModifiedEvent>",
)
FORGED_NEW_MAIL = (
    # New mail for an item that does not exist, in a folder of someone else's mailbox: content is never trusted.
    '<t:NewMailEvent><t:Watermark>{given}</t:Watermark><t:TimeStamp>2026-01-01T00:00:00Z</t:TimeStamp>'
    '<t:ItemId Id="AAMk-forged" ChangeKey="ck"/><t:ParentFolderId Id="AQMkF-other" ChangeKey="ck"/>'
    "</t:NewMailEvent>"
)


def test_forged_and_unknown_events_do_nothing_harmful(account, fake_ews):  # noqa: F811
    listener = _Recorder()
    try:
        listener.refresh()
        watch = listener.connections[account.pk]
        wait_for(lambda: watch.connected, timeout=20)
        sync_account(account.pk)
        before = SyncedMessage.objects.filter(account=account).count()

        with fake_ews._lock:
            fake_ews.notify.forged = list(FORGED_IGNORED)
        wait_for(lambda: fake_ews.notify.forged == [], timeout=20)
        asked = fake_ews.calls.count("GetEvents")
        wait_for(lambda: fake_ews.calls.count("GetEvents") >= asked + 2, timeout=20)
        assert listener.queued == []

        with fake_ews._lock:
            fake_ews.notify.forged = [FORGED_NEW_MAIL]
        wait_for(lambda: listener.queued == [account.pk], timeout=20)
        assert sync_account(account.pk) == 0  # the run reads the mailbox: nothing new there
        assert SyncedMessage.objects.filter(account=account).count() == before
        # The watch went on with its own watermark: a real delivery is still announced once.
        fake_ews.deliver("inbox", subject="echt")
        wait_for(lambda: listener.queued == [account.pk] * 2, timeout=20)
        assert watch.connects == 1 and watch.resubscribed == 0 and watch.connected
    finally:
        listener.stop()


def test_the_per_destination_cap_counts_ews_subscriptions(account, fake_ews, make_account, user, quick):  # noqa: F811
    second = _exchange_account(make_account, user, fake_ews, address="bernd@firma.test")
    quick.IMAP_IDLE_MAX_PER_DESTINATION = 1
    listener = _Recorder()
    try:
        listener.refresh()
        wait_for(lambda: listener.subscribed() == 1, timeout=20)
        asked = fake_ews.calls.count("GetEvents")
        wait_for(lambda: fake_ews.calls.count("GetEvents") >= asked + 3, timeout=20)
        assert listener.subscribed() == 1 and len(fake_ews.notify.subscriptions) == 1
        assert fake_ews.calls.count("Subscribe") == 1  # the other account waited for a free slot
        held = next(pk for pk, conn in listener.connections.items() if conn.connected)
        listener.connections[held].stop.set()  # the slot is given back: the other account takes it
        wait_for(lambda: listener.connections[({account.pk, second.pk} - {held}).pop()].connected, timeout=20)
    finally:
        listener.stop()


def test_a_watermark_the_server_refuses_is_a_lost_subscription(account, fake_ews):  # noqa: F811
    listener = _Recorder()
    try:
        listener.refresh()
        watch = listener.connections[account.pk]
        wait_for(lambda: watch.connected, timeout=20)
        with fake_ews._lock:
            # A server restored from backup: it knows the subscription, but not the watermark it issued.
            next(iter(fake_ews.notify.subscriptions.values()))["issued"] = -1
        wait_for(lambda: watch.resubscribed == 1, timeout=20)
        fake_ews.deliver("inbox", subject="neu")
        wait_for(lambda: listener.queued == [account.pk], timeout=20)
        assert watch.connects == 1
    finally:
        listener.stop()


def test_the_listener_command_serves_exchange_accounts(account, fake_ews, celery_worker_thread, settings,  # noqa: F811
                                                       tmp_path):
    """manage.py imap_idle as deployed: a separate process, its own database connection and heartbeat."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from portal.models import Heartbeat
    from tests.conftest import worker_environment

    ca = tmp_path / "ca.pem"
    ca.write_text(fake_ews.cert_pem)
    env = worker_environment(settings, SimpleNamespace(cert_path=ca), EWS_PULL_SECONDS="1",
                             IMAP_IDLE_REFRESH_SECONDS="1", IMAP_IDLE_DEBOUNCE_SECONDS="0")
    log = open(tmp_path / "listener.log", "w")
    process = subprocess.Popen([sys.executable, "manage.py", "imap_idle", "--shard", "0/1"],
                               cwd=Path(__file__).resolve().parent.parent, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: Heartbeat.objects.filter(name="ews_pull:0/1", count=1).exists(), timeout=30)
        fake_ews.deliver("inbox", subject="über den Dienst")
        wait_for(lambda: "über den Dienst" in _subjects(account), timeout=20)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "listener.log").read_text()
    assert "Unsubscribe" in fake_ews.calls  # a clean stop leaves no subscription behind


def test_a_refused_password_is_not_retried_and_is_no_push_error(account, fake_ews):  # noqa: F811
    from sync import crypto

    MailAccount.objects.filter(pk=account.pk).update(secret_encrypted=crypto.encrypt_json({"password": "falsch"}))
    listener = _Recorder()
    try:
        listener.refresh()
        watch = listener.connections[account.pk]
        watch.join(timeout=20)
        assert watch.refused and not watch.is_alive() and not watch.unsupported
        listener.refresh()
        assert listener.connections[account.pk] is watch  # not started again with the same secret
        assert "Subscribe" not in fake_ews.calls and listener.queued == []
        assert MailAccount.objects.get(pk=account.pk).push_error == ""  # the sync run records the password
    finally:
        listener.stop()
