"""IMAP IDLE push: a long-running listener that queues a sync run when new mail arrives.

One listener process serves one shard of the V3 IMAP accounts (account id % N == i),
with one IDLE connection per account on the INBOX (RFC 2177). An untagged EXISTS or
RECENT during IDLE queues sync.queue.enqueue_sync(account) (debounced per account);
the notification is never trusted as content, the ordinary sync run reads the mailbox.
Where the server offers NOTIFY (RFC 5465), the same connection also hears of new mail
in the other synced folders (an untagged STATUS; sync.imap.notify).

Why threads over imapclient rather than an asyncio client (aioimaplib): every connection
goes through sync.imap.client.open_mailbox, the same code the sync runs use, so the
egress guard (the address is checked, then connected to by address while TLS verifies
the name the user gave), the TLS rules (implicit TLS or STARTTLS, never a password in
clear text) and the byte caps are the sync's own, not a second implementation.
aioimaplib 2.0 connects by host name (loop.create_connection(host, ...)): it resolves
again after the guard checked the address (a DNS-rebinding gap) and has no way to pin an
address while verifying the certificate against the name. A waiting IDLE thread blocks
in poll() on its socket; threads are started with a small stack (IDLE_THREAD_STACK).

Ownership of a shard is a PostgreSQL session advisory lock held by the listener's own
database connection: a listener killed with SIGKILL loses its connection, PostgreSQL
releases the lock, and a standby listener for that shard (waiting on the same lock)
takes over within IMAP_IDLE_REFRESH_SECONDS. Each owner writes a heartbeat row
(portal.models.Heartbeat "imap_idle:i/N") with its connection count, read by /health/
and by the fan-out (pushed accounts are polled every SYNC_PUSH_POLL_SECONDS).

A wrong password is not retried and marks nothing: the account's sync run records the
error and the re-connect flow asks the user; once the stored secret changes the
listener tries again.

V3 Exchange (EWS) accounts are served by the same listener (one shard, lock, heartbeat
and per-destination cap for both): each gets a sync.exchange.push.EwsWatch thread in
place of an IDLE connection, holding a pull subscription on its Inbox. An account whose
server refuses notifications is recorded with MailAccount.push_error and left out of
the shard (it stays on normal polling). Each owner also writes an "ews_pull:i/N"
heartbeat row with its live EWS subscriptions, read by /health/.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, close_old_connections, connection, connections
from django.db.models import F, Q
from django.db.models.functions import Mod
from django.utils import timezone

from sync import queue
from sync.backoff import reconnect_delay
from sync.egress import ascii_host
from sync.errors import MailboxError
from sync.exchange.client import EwsSettings
from sync.exchange.client import settings_of as ews_settings_of
from sync.exchange.push import EwsWatch
from sync.imap import client as imap
from sync.imap import notify
from sync.imap.idle_wait import SocketReader, idle_check
from sync.models import AccountStatus, MailAccount

logger = logging.getLogger(__name__)

# Any constant: the advisory lock class of the listener shards (the shard number is the second key).
IDLE_LOCK = 0x1D_1E_15
HEARTBEAT_PREFIX = "imap_idle:"
EWS_HEARTBEAT_PREFIX = "ews_pull:"  # the same shard's count of EWS subscriptions (Heartbeat has one count)
PUSH_KINDS = ("imap", "exchange")
IDLE_THREAD_STACK = 512 * 1024


def heartbeat_name(shard: int, shards: int) -> str:
    """The Heartbeat row name of one shard's owner, e.g. "imap_idle:0/2" (its count: open connections)."""
    return f"{HEARTBEAT_PREFIX}{shard}/{shards}"


def shard_accounts(shard: int, shards: int):
    """The V3 IMAP and Exchange accounts this shard listens for: a MailAccount queryset (id % shards == shard).

    Accounts with a push_error (their server refused notifications) are left out: they stay on normal polling.
    """
    return (
        MailAccount.objects.filter(engine="v3", provider_kind__in=PUSH_KINDS, push_error="")
        .exclude(status__in=(AccountStatus.STOPPED, AccountStatus.RECONNECT))
        .alias(shard_no=Mod(F("pk"), shards)).filter(shard_no=shard)
    )


def pushed_accounts_q(now) -> Q | None:
    """A Q on MailAccount for the accounts a live listener shard covers at `now`, None when no
    listener is live. One query (the heartbeat rows fresher than IMAP_IDLE_STALE_SECONDS)."""
    from portal.models import Heartbeat

    fresh = now - timedelta(seconds=settings.IMAP_IDLE_STALE_SECONDS)
    rows = Heartbeat.objects.filter(name__startswith=HEARTBEAT_PREFIX, seen_at__gte=fresh).values_list("name", flat=True)
    covered = None
    for name in rows:
        shard, shards = (int(part) for part in name[len(HEARTBEAT_PREFIX):].split("/"))
        q = Q(pk__in=shard_accounts(shard, shards).values("pk"))
        covered = q if covered is None else covered | q
    return covered


@dataclass
class Target:
    """What one IDLE connection (or EWS watch) needs; `secret` is the encrypted column, to notice a new password."""

    account_id: int
    server: "imap.ImapSettings | EwsSettings"
    password: str = field(repr=False)
    secret: str = field(repr=False)


class Destinations:
    """At most IMAP_IDLE_MAX_PER_DESTINATION connections per mail server (host, port) in this process."""

    def __init__(self, limit: int):
        self.limit, self.counts, self.lock = limit, {}, threading.Lock()

    def take(self, key) -> bool:
        with self.lock:
            if self.counts.get(key, 0) >= self.limit:
                return False
            self.counts[key] = self.counts.get(key, 0) + 1
            return True

    def give(self, key) -> None:
        with self.lock:
            self.counts[key] -= 1


class Connection(threading.Thread):
    """One account's IDLE loop: connect, SELECT INBOX, IDLE, queue a sync on new mail, re-IDLE, reconnect."""

    def __init__(self, target: Target, listener: "Listener"):
        super().__init__(name=f"idle-{target.account_id}", daemon=True)
        self.target, self.listener = target, listener
        self.stop = threading.Event()
        self.connected = False
        self.refused = False  # a wrong password: not retried until the secret changes
        self.client = None
        self.connects = 0  # successful logins, for tests and logs
        self.watched: list[str] | None = None  # folders besides INBOX under NOTIFY; None: plain IDLE
        self.start_after = 0.0  # seconds to wait before the first connect (Listener.refresh's ramp)

    def run(self) -> None:
        if self.stop.wait(self.start_after):
            return
        failures = 0
        key = (ascii_host(self.target.server.host), self.target.server.port)
        while not self.stop.is_set():
            if not self.listener.destinations.take(key):
                self.stop.wait(reconnect_delay(failures := failures + 1))
                continue
            try:
                client = imap.open_mailbox(self.target.server, self.target.password)
            except MailboxError as error:
                self.listener.destinations.give(key)
                if error.code == "auth_failed":
                    logger.warning("IDLE for account %s: the password is refused; not retried until it changes",
                                   self.target.account_id)
                    self.refused = True
                    return
                failures += 1
                logger.info("IDLE for account %s: %s, retrying", self.target.account_id, error.code)
                self.stop.wait(reconnect_delay(failures))
                continue
            try:
                # Mail may have arrived while no listener watched (a reconnect, a takeover, a
                # restart): the account is made due, and the fan-out syncs it within its bounds
                # (SYNC_FANOUT_MAX), so a listener restart does not queue every account at once.
                self.listener.catch_up(self.target.account_id)
                self.client = client
                self.connected = True
                self.connects += 1
                failures = 0
                self._idle(client)
            except Exception as error:  # noqa: BLE001 - any broken connection: logged, reconnected after a back-off
                failures += 1
                logger.info("IDLE for account %s dropped (%s: %s), reconnecting", self.target.account_id,
                            type(error).__name__, error)
            finally:
                self.connected, self.client = False, None
                self.listener.destinations.give(key)
                imap.close(client)
            self.stop.wait(reconnect_delay(failures))

    def _idle(self, client) -> None:
        client.select_folder("INBOX", readonly=True)
        client._imap.file = SocketReader(client._imap.sock)  # nothing is buffered after the tagged OK
        statuses = notify.NewMail()
        while not self.stop.is_set():
            # RFC 5465 where offered: the other synced folders announce new mail too (sync.imap.notify).
            self.watched = notify.watch_folders(client)
            client.idle()
            started = time.monotonic()
            # RFC 2177: servers may drop an IDLE after 30 minutes; leave and re-enter it earlier.
            while not self.stop.is_set() and time.monotonic() - started < settings.IMAP_IDLE_SECONDS:
                responses = idle_check(client)
                # Every STATUS is looked at (not any(): it keeps each folder's UIDNEXT).
                news = [statuses.announced(r) or (len(r) > 1 and r[1] in (b"EXISTS", b"RECENT")) for r in responses]
                if any(news):
                    self.listener.trigger(self.target.account_id)
            client.idle_done()


class Listener:
    """One shard's listener: keeps one Connection per account of the shard, queues debounced syncs."""

    def __init__(self, shard: int, shards: int):
        self.shard, self.shards = shard, shards
        self.connections: dict[int, Connection] = {}
        self.destinations = Destinations(settings.IMAP_IDLE_MAX_PER_DESTINATION)
        self.last_queued: dict[int, float] = {}
        self.pending: set[int] = set()
        self.due: set[int] = set()
        self.lock = threading.Lock()
        self.enqueued = 0

    def trigger(self, account_id: int) -> None:
        """New mail for the account: queue a sync now, or at the end of the debounce window."""
        with self.lock:
            since = time.monotonic() - self.last_queued.get(account_id, -1e9)
            if since < settings.IMAP_IDLE_DEBOUNCE_SECONDS:
                self.pending.add(account_id)
                return
            self.last_queued[account_id] = time.monotonic()
        self._enqueue(account_id)

    def catch_up(self, account_id: int) -> None:
        """A connection (re)started: the account is made due now (applied by the main thread)."""
        with self.lock:
            self.due.add(account_id)

    def mark_due(self) -> None:
        """Make the accounts of catch_up() due now: one UPDATE (the main thread owns the database)."""
        with self.lock:
            ids, self.due = list(self.due), set()
        if ids:
            MailAccount.objects.filter(pk__in=ids).update(sync_due_at=timezone.now())

    def flush(self) -> None:
        """Queue the syncs whose debounce window has passed."""
        now = time.monotonic()
        with self.lock:
            due = [pk for pk in self.pending if now - self.last_queued.get(pk, 0) >= settings.IMAP_IDLE_DEBOUNCE_SECONDS]
            for pk in due:
                self.pending.discard(pk)
                self.last_queued[pk] = now
        for pk in due:
            self._enqueue(pk)

    def _enqueue(self, account_id: int) -> None:
        try:
            queue.enqueue_sync(account_id)
            self.enqueued += 1
            logger.info("New mail for account %s: sync queued", account_id)
        except Exception as error:  # noqa: BLE001 - a broker outage: the poll fan-out picks the account up
            logger.error("Could not queue a sync of account %s (%s); the poll picks it up",
                         account_id, type(error).__name__)

    def refresh(self) -> None:
        """Start connections for new accounts, stop those that left V3/IMAP/Exchange or changed their settings;
        record push_error for EWS accounts whose server refused notifications (they leave the shard)."""
        self._record_unsupported()
        wanted = {}
        for account in shard_accounts(self.shard, self.shards).only(
                "pk", "provider_kind", "imap_host", "imap_port", "imap_security", "username", "address",
                "secret_encrypted", "ews_url", "ews_auth_type", "tls_ca_pem"):
            wanted[account.pk] = account
        for pk, conn in list(self.connections.items()):
            account = wanted.get(pk)
            if account is None or account.secret_encrypted != conn.target.secret or \
                    server_of(account) != conn.target.server or (not conn.is_alive() and not conn.refused):
                conn.stop.set()
                del self.connections[pk]
        # A ramp: new connections start IMAP_IDLE_CONNECTS_PER_SECOND apart, not all at once. Measured: 2,000 at
        # once on 2 cores left hundreds past MAIL_CONNECT_TIMEOUT after the server had logged them in (retries).
        ramp = 0
        for pk, account in wanted.items():
            if pk in self.connections or not (account.ews_url if account.provider_kind == "exchange"
                                              else account.imap_host):
                continue
            from sync.services import password_of

            try:
                password = password_of(account)
            except Exception as error:  # noqa: BLE001 - an unreadable secret (rotated keys): the sync run records it
                logger.warning("IDLE for account %s: its password cannot be read (%s)", pk, type(error).__name__)
                continue
            target = Target(pk, server_of(account), password, account.secret_encrypted)
            conn = (EwsWatch if account.provider_kind == "exchange" else Connection)(target, self)
            conn.start_after = ramp / settings.IMAP_IDLE_CONNECTS_PER_SECOND
            ramp += 1
            self.connections[pk] = conn
            conn.start()

    def _record_unsupported(self) -> None:
        """EWS watches that ended because the server refuses notifications: their code goes on the account
        (one UPDATE per account), which takes it out of the shard; it stays on normal polling."""
        ended = [(pk, conn.unsupported) for pk, conn in self.connections.items()
                 if getattr(conn, "unsupported", "") and not conn.is_alive()]
        for pk, code in ended:
            MailAccount.objects.filter(pk=pk, push_error="").update(push_error=code)

    def connected(self) -> int:
        """IMAP IDLE connections up now."""
        return sum(1 for conn in self.connections.values() if conn.connected and not isinstance(conn, EwsWatch))

    def subscribed(self) -> int:
        """EWS pull subscriptions held now."""
        return sum(1 for conn in self.connections.values() if conn.connected and isinstance(conn, EwsWatch))

    def beat(self) -> None:
        from portal.heartbeats import record

        record(heartbeat_name(self.shard, self.shards), count=self.connected())
        record(f"{EWS_HEARTBEAT_PREFIX}{self.shard}/{self.shards}", count=self.subscribed())
        touch_heartbeat_file()


    def stop(self) -> None:
        for conn in self.connections.values():
            conn.stop.set()
        for conn in self.connections.values():
            conn.join(timeout=settings.IMAP_IDLE_CHECK_SECONDS + 5)
        self.connections.clear()


def touch_heartbeat_file() -> None:
    """Touch IMAP_IDLE_HEARTBEAT_FILE (when set) for a container health check that needs no database."""
    if settings.IMAP_IDLE_HEARTBEAT_FILE:
        try:
            Path(settings.IMAP_IDLE_HEARTBEAT_FILE).touch()
        except OSError as error:
            logger.warning("IDLE heartbeat file %s: %s", settings.IMAP_IDLE_HEARTBEAT_FILE, error.strerror)


def server_of(account: MailAccount) -> "imap.ImapSettings | EwsSettings":
    """The connection settings the account's watcher uses (IMAP, or EWS for provider_kind "exchange")."""
    if account.provider_kind == "exchange":
        return ews_settings_of(account)
    from sync.services import imap_settings_of

    return imap_settings_of(account)


def lock_connection():
    """A database connection of its own for the shard's advisory lock (a Django DatabaseWrapper).

    Why not Django's connection: `close_old_connections()` (called by every
    heartbeat) closes that one once it is older than CONN_MAX_AGE, and a
    session-level advisory lock goes with its session; the listener then lost
    its shard every minute. This one is closed only by `serve()`.
    """
    return connections.create_connection(DEFAULT_DB_ALIAS)


def claim_shard(shard: int, db=connection) -> bool:
    """Take the shard's advisory lock on the session of `db` (PostgreSQL); False if another session holds it.

    Other databases (SQLite, the embedded default of one machine) have no such lock:
    there the one supervised listener owns every shard it is started for.
    """
    if db.vendor != "postgresql":
        db.ensure_connection()
        return True
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [IDLE_LOCK, shard])
        return bool(cursor.fetchone()[0])


def still_owner(shard: int, db=connection) -> bool:
    """Whether the session of `db` still holds the shard's lock (False when that connection was lost)."""
    try:
        if db.vendor != "postgresql":
            db.ensure_connection()
            return True
        with db.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                "AND classid = %s AND objid = %s AND granted", [IDLE_LOCK, shard])
            return cursor.fetchone()[0] == 1
    except Exception:  # noqa: BLE001 - the connection is gone, and the lock with it
        return False


def serve(shard: int, shards: int, *, stop: threading.Event) -> None:
    """Wait for the shard, then listen until `stop` is set or the shard is lost (then return).

    Runs in the main thread. The lock is held on a database connection of its
    own (`lock_connection`), used only here; connection threads never touch the database.
    """
    threading.stack_size(IDLE_THREAD_STACK)
    db = lock_connection()
    try:
        _serve(shard, shards, stop=stop, db=db)
    finally:
        db.close()


def _serve(shard: int, shards: int, *, stop: threading.Event, db) -> None:
    while not stop.is_set():
        touch_heartbeat_file()  # a standby is alive too: its container stays healthy
        close_old_connections()
        try:
            if claim_shard(shard, db):
                break
        except Exception as error:  # noqa: BLE001 - the database is down: wait, try again
            logger.warning("IDLE shard %s/%s: cannot reach the database (%s)", shard, shards, type(error).__name__)
            db.close()
        stop.wait(settings.IMAP_IDLE_REFRESH_SECONDS)
    else:
        return
    logger.info("IDLE shard %s/%s claimed", shard, shards)
    listener = Listener(shard, shards)
    try:
        while not stop.is_set():
            if not still_owner(shard, db):
                logger.error("IDLE shard %s/%s: lost the database lock; stopping", shard, shards)
                return
            try:
                listener.refresh()
                listener.mark_due()
            except DatabaseError as error:  # an outage: still_owner() decides at the next tick
                logger.warning("IDLE shard %s/%s: database error (%s)", shard, shards, type(error).__name__)
            listener.beat()
            for _ in range(max(1, int(settings.IMAP_IDLE_REFRESH_SECONDS * 10))):
                listener.flush()
                if stop.wait(0.1):
                    break
    finally:
        listener.stop()
