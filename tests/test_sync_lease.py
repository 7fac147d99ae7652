"""One sync run per account at a time: the lease, the fan-out's queued mark, two real workers and beat.

Runs are observed from outside: every run of the test account connects to the
real Dovecot through ObservingProxy, which holds each connection a while (a
slow mail server) and counts connections that began while another one of the
account was still open. Workers and beat are real `celery` processes on the
session's Redis and PostgreSQL.
"""

import base64
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.utils import timezone

from portal.celery import app
from portal.devservers import make_message
from sync import leases, v2
from sync.models import MailAccount, SyncedMessage
from sync.runs import sync_account
from sync.tasks import sync_account as sync_task
from sync.tasks import sync_all_accounts
from tests.conftest import wait_for, worker_environment

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent
LEASE_SECONDS = 3  # short, so that a killed worker's lease expires within the test


class ObservingProxy:
    """A TCP proxy to Dovecot that holds each new connection `delay` seconds, counting sessions.

    overlaps: connections accepted while another one was still open. A
    session ends when its client closes (or the server ends it); a client
    that went away is noticed at the next accept too (kernel-level peek).
    """

    def __init__(self, target_port: int, delay: float):
        self.target_port, self.delay = target_port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.sessions: list[dict] = []
        self.accepted = self.overlaps = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def open_sessions(self) -> int:
        with self.lock:
            return self._open_locked()

    def _open_locked(self) -> int:
        for session in self.sessions:
            if not session["ended"] and self._client_gone(session["client"]):
                session["ended"] = True
        return sum(not session["ended"] for session in self.sessions)

    @staticmethod
    def _client_gone(sock: socket.socket) -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _serve(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            with self.lock:
                if self._open_locked():
                    self.overlaps += 1
                session = {"client": client, "ended": False}
                self.sessions.append(session)
                self.accepted += 1
            threading.Thread(target=self._handle, args=(session,), daemon=True).start()

    def _handle(self, session):
        client, upstream, pending = session["client"], None, b""
        deadline = time.monotonic() + self.delay
        try:
            # The slow server: nothing is answered yet; what the client sends
            # (its TLS hello) is kept, and a client that goes away is noticed.
            while (left := deadline - time.monotonic()) > 0 and not self.stopped.is_set():
                if select.select([client], [], [], min(left, 0.2))[0]:
                    data = client.recv(65536)
                    if not data:
                        return
                    pending += data
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            upstream.sendall(pending)
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
            self._pipe(client, upstream)
        except OSError:
            pass
        finally:
            session["ended"] = True
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)  # pass the end on; the other direction ends by itself
        except OSError:
            pass

    def close(self):
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def proxy(dovecot):
    proxy = ObservingProxy(dovecot.tls_port, delay=0)
    yield proxy
    proxy.close()


@pytest.fixture
def slow_account(imap_account, dovecot, mailbox, mail_settings, proxy):
    """The V2 account on the real Dovecot with 5 messages, reached through the proxy (no delay yet)."""
    for number in range(5):
        dovecot.deliver(mailbox[0], make_message(subject=f"Nachricht {number}"))
    MailAccount.objects.filter(pk=imap_account.pk).update(imap_port=proxy.port)
    imap_account.refresh_from_db()
    return imap_account


@pytest.fixture
def redis():
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        client.flushdb()  # nothing queued by an earlier test
        yield client


def queued(redis, task: str) -> list[tuple[list, dict]]:
    """The (args, kwargs) of every message of `task` waiting in the broker's default queue, oldest first."""
    found = []
    for raw in reversed(redis.lrange("celery", 0, -1)):  # kombu pushes on the left, takes from the right
        message = json.loads(raw)
        if message["headers"]["task"] == task:
            args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            found.append((args, kwargs))
    return found


def lease_of(account) -> tuple:
    return MailAccount.objects.filter(pk=account.pk).values_list("sync_lease_until", "sync_lease_token").get()


# --- the lease ------------------------------------------------------------------------------------------------


def test_it_does_nothing_while_another_run_holds_the_lease(slow_account, proxy):
    token = leases.claim(slow_account.pk)
    assert token and leases.claim(slow_account.pk) is None

    assert sync_account(slow_account.pk) == 0
    account = MailAccount.objects.get(pk=slow_account.pk)
    assert (account.status, account.last_sync_error, account.last_sync_at) == ("active", "", None)  # no error
    assert account.sync_lease_token == token and proxy.accepted == 0  # the mailbox was not touched

    assert leases.release(slow_account.pk, token)
    assert sync_account(slow_account.pk) == 5
    until, token_after = lease_of(slow_account)
    assert token_after == "" and until <= timezone.now()  # released when the run ended
    assert proxy.accepted == 1


def test_it_releases_the_lease_when_the_run_fails(slow_account, dovecot, mailbox):
    dovecot.set_password(mailbox[0], "geändert")
    assert sync_account(slow_account.pk) == 0
    account = MailAccount.objects.get(pk=slow_account.pk)
    assert account.last_sync_error == "auth_failed" and account.sync_lease_token == ""
    assert leases.claim(slow_account.pk) is not None  # the next run may start


def test_it_takes_over_an_expired_lease_and_the_old_run_cannot_release_it(user, make_account):
    account = make_account(user, "anna@gmx.de", imap_host="imap.gmx.net")
    old = leases.claim(account.pk)
    # The worker holding `old` was killed: nobody renewed its lease.
    MailAccount.objects.filter(pk=account.pk).update(sync_lease_until=timezone.now() - timedelta(seconds=1))
    new = leases.claim(account.pk)
    assert new and new != old
    assert not leases.renew(account.pk, old) and not leases.release(account.pk, old)
    assert lease_of(account)[1] == new
    assert leases.release(account.pk, new) and lease_of(account)[1] == ""
    assert leases.claim(0) is None  # no such account


def test_it_renews_the_lease_while_the_run_lasts(user, make_account, settings):
    settings.SYNC_LEASE_SECONDS = LEASE_SECONDS
    account = make_account(user, "anna@gmx.de", imap_host="imap.gmx.net")
    with leases.held(account.pk) as held:
        assert held
        first_until, token = lease_of(account)
        # Renewed every second: after two renewals the lease reaches past its first end.
        wait_for(lambda: lease_of(account)[0] >= first_until + timedelta(seconds=2), timeout=20)
        assert leases.claim(account.pk) is None and lease_of(account)[1] == token
        with leases.held(account.pk) as second:
            assert not second
        assert lease_of(account)[1] == token  # the refused one released nothing
    assert lease_of(account)[1] == ""


# --- the fan-out ----------------------------------------------------------------------------------------------


def next_interval(account_id):
    """As if SYNC_INTERVAL_SECONDS had passed since the fan-out last queued the account."""
    MailAccount.objects.filter(pk=account_id).update(sync_due_at=timezone.now() - timedelta(seconds=1))



def test_it_queues_an_account_once_while_it_is_queued_or_running(slow_account, redis):
    for _ in range(3):
        sync_all_accounts()
    runs = queued(redis, "sync.tasks.sync_account")
    assert len(runs) == 1 and runs[0][0][0] == slow_account.pk
    (account_id, queued_at), _ = runs[0]
    assert MailAccount.objects.get(pk=account_id).sync_queued_at.isoformat() == queued_at

    # The queued run, as a worker runs it: while it holds the lease the
    # fan-out queues nothing, although its queued mark is already cleared.
    with leases.held(account_id) as held:
        assert held
        leases.clear_queued(account_id, MailAccount.objects.get(pk=account_id).sync_queued_at)
        assert sync_all_accounts() == 0
    assert len(queued(redis, "sync.tasks.sync_account")) == 1

    # The run is over: a fan-out within the same interval (a second beat) leaves it alone,
    # the next interval's fan-out queues it again, once.
    assert sync_all_accounts() == 0
    next_interval(account_id)
    assert sync_all_accounts() == 1 and sync_all_accounts() == 0
    runs = queued(redis, "sync.tasks.sync_account")
    assert len(runs) == 2
    newest = runs[-1][0][1]

    # An older message of the account, taken now, syncs but clears only its own mark.
    assert sync_task(account_id, queued_at) == 5
    assert MailAccount.objects.get(pk=account_id).sync_queued_at.isoformat() == newest
    assert sync_all_accounts() == 0
    # The newest one clears it.
    assert sync_task(account_id, newest) == 0
    assert MailAccount.objects.get(pk=account_id).sync_queued_at is None
    next_interval(account_id)
    assert sync_all_accounts() == 1


def test_it_queues_again_when_a_queued_run_was_lost(slow_account, redis, settings):
    assert sync_all_accounts() == 1
    # The broker lost the message: after SYNC_QUEUED_TIMEOUT_SECONDS the fan-out tries again.
    MailAccount.objects.filter(pk=slow_account.pk).update(
        sync_queued_at=timezone.now() - timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT_SECONDS + 1)
    )
    next_interval(slow_account.pk)  # the timeout is longer than the interval
    assert sync_all_accounts() == 1
    assert len(queued(redis, "sync.tasks.sync_account")) == 2


def test_it_claims_due_accounts_in_bounded_batches_and_skips_locked_ones(user, make_account, redis, settings):
    assert connection.vendor == "postgresql"  # SKIP LOCKED is real here
    settings.SYNC_FANOUT_BATCH = 2
    now = timezone.now()
    accounts = [make_account(user, f"konto{n}@gmx.de", imap_host="imap.gmx.net") for n in range(5)]
    # Least recently run first, never run before all.
    for account, minutes_ago in zip(accounts[1:], [10, 30, 20, 40]):
        MailAccount.objects.filter(pk=account.pk).update(sync_lease_until=now - timedelta(minutes=minutes_ago))
    locked, unlock = threading.Event(), threading.Event()

    def hold_row_lock():
        try:
            with transaction.atomic():
                MailAccount.objects.select_for_update().get(pk=accounts[0].pk)
                locked.set()
                unlock.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_row_lock)
    holder.start()
    try:
        locked.wait(10)
        batches = [sync_all_accounts() for _ in range(3)]
        order = [args[0] for args, _ in queued(redis, "sync.tasks.sync_account")]
    finally:
        unlock.set()
        holder.join()
    assert batches == [2, 2, 0]  # the locked account was skipped, not waited for
    assert order == [accounts[4].pk, accounts[2].pk, accounts[3].pk, accounts[1].pk]
    assert sync_all_accounts() == 1 and sync_all_accounts() == 0
    assert [args[0] for args, _ in queued(redis, "sync.tasks.sync_account")][-1] == accounts[0].pk


# --- real workers and beat --------------------------------------------------------------------------------------


def _celery(settings, dovecot, *arguments):
    env = worker_environment(settings, dovecot, SYNC_LEASE_SECONDS=str(LEASE_SECONDS),
                             SYNC_INTERVAL_SECONDS="5")  # beat's fan-out; the smallest interval allowed
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", *arguments, "--loglevel=WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def worker(settings, dovecot, name):
    return _celery(settings, dovecot, "worker", "--pool=solo", "-n", f"{name}@%h", "--without-gossip",
                   "--without-mingle", "--without-heartbeat")


def beat(settings, dovecot, folder):
    return _celery(settings, dovecot, "beat", "--schedule", str(Path(folder) / "beat-schedule"))


def stop(*processes):
    for process in processes:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # warm shutdown: a running task finishes
    for process in processes:
        if process is not None:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def drained(redis, proxy) -> bool:
    """Nothing waits in the queue, no task is running (acks_late: unacked until it finished), no connection open."""
    return redis.llen("celery") == 0 and redis.hlen("unacked") == 0 and proxy.open_sessions() == 0


def test_it_sees_overlapping_runs_when_nothing_guards_them(slow_account, proxy):
    # The observer itself: two engine runs side by side, bypassing the lease, are one overlap.
    proxy.delay = 1
    threads = [threading.Thread(target=lambda: (v2.poll(slow_account), connection.close())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert proxy.accepted == 2 and proxy.overlaps == 1


def test_it_never_runs_one_account_twice_at_once_on_two_workers(slow_account, redis, settings, dovecot, proxy):
    proxy.delay = LEASE_SECONDS + 1  # every run outlives its first lease: only renewal keeps it
    folder = tempfile.mkdtemp(prefix="beat-")
    processes = [worker(settings, dovecot, "eins"), worker(settings, dovecot, "zwei")]
    try:
        wait_for(lambda: len(app.control.ping(timeout=0.5)) == 2, timeout=60)
        processes.append(beat(settings, dovecot, folder))
        sent = 0

        def hammer():
            # The same account, again and again, as direct runs and as the fan-out beat sends.
            nonlocal sent
            sync_task.delay(slow_account.pk)
            app.send_task("sync.tasks.sync_all_accounts")
            sent += 2
            return proxy.accepted >= 3

        wait_for(hammer, timeout=120, interval=0.05)
        wait_for(lambda: drained(redis, proxy), timeout=60)
    finally:
        stop(*processes)
    assert proxy.overlaps == 0
    assert proxy.accepted >= 3 and sent >= 20 * proxy.accepted  # many more attempts than runs
    assert SyncedMessage.objects.filter(account=slow_account).count() == 5
    account = MailAccount.objects.get(pk=slow_account.pk)
    assert account.sync_lease_token == "" and account.last_sync_error == ""


def test_it_syncs_again_after_a_killed_workers_lease_expires(slow_account, redis, settings, dovecot, proxy):
    proxy.delay = 60  # the run waits for the mail server when its worker is killed
    folder = tempfile.mkdtemp(prefix="beat-")
    first = worker(settings, dovecot, "eins")
    second = timer = None
    try:
        sync_task.delay(slow_account.pk)
        wait_for(lambda: proxy.accepted == 1, timeout=60)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        # The dead run still holds the lease; nothing was stored.
        assert lease_of(slow_account)[1] != ""
        assert SyncedMessage.objects.filter(account=slow_account).count() == 0
        proxy.delay = 0
        second, timer = worker(settings, dovecot, "zwei"), beat(settings, dovecot, folder)
        # With acks_late the broker would give the killed task back only after its
        # visibility timeout (an hour): beat's fan-out syncs the account once the lease expired.
        wait_for(lambda: SyncedMessage.objects.filter(account=slow_account).count() == 5, timeout=60)
        wait_for(lambda: lease_of(slow_account)[1] == "", timeout=30)
    finally:
        stop(first, second, timer)
    assert proxy.accepted >= 2 and proxy.overlaps == 0
    assert MailAccount.objects.get(pk=slow_account.pk).last_sync_error == ""
