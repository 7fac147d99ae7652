"""One sync run per account at a time, and one queued run per account from the fan-out.

Two marks on the MailAccount row, both taken by compare-and-swap:

- the lease (sync_lease_until, sync_lease_token): a run claims it before it
  touches the mailbox and releases it when it ends, whatever the outcome. While
  the run lasts, a thread renews it every third of SYNC_LEASE_SECONDS; a killed
  worker stops renewing, so its lease simply expires. After a release
  sync_lease_until holds the moment the last run ended (the fan-out serves the
  least recently run accounts first).
- the queued mark (sync_queued_at): the fan-out sets it when it queues a run and
  skips the account while it is newer than SYNC_QUEUED_TIMEOUT_SECONDS (a lost
  broker message is queued again after that). The queued run clears its own mark.
- the next due time (sync_due_at): set with the queued mark, DUE_FRACTION of the
  shortest interval (SYNC_INTERVAL_MIN_SECONDS) ahead, and when the run ends to
  its adaptive interval (sync.schedule). The other two marks only keep runs from overlapping;
  without this one, a second beat started by mistake, ticking between the first
  one's ticks, would queue every account again as soon as its run ended: twice
  the logins at every mailbox. With it, any number of beats queue an account at
  most once per DUE_FRACTION of the interval. The fraction is below 1 so that
  one beat whose fan-out runs a little earlier in its interval than the last
  time (it waited less in the queue) still finds its accounts due.

A run has at most SYNC_RUN_MAX_SECONDS: then the renewal stops (the lease
expires, so the account is not held forever) and the callbacks the run
registered with on_overrun() are called from the renewal thread; the IMAP
client registers one that shuts its socket down, so a server that answers one
byte a second cannot pin a worker.

Times come from the Python clock of the process that writes them: leases last
minutes, a few seconds of skew between machines do not matter.
"""

import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from portal.logsafe import describe
from sync import destinations
from sync.models import MailAccount

logger = logging.getLogger(__name__)


def lease_free(now: datetime) -> Q:
    """Accounts no run holds now: never leased, released, or expired (a crashed run)."""
    return Q(sync_lease_until__isnull=True) | Q(sync_lease_until__lte=now)


def not_queued(now: datetime) -> Q:
    """Accounts without a queued fan-out run younger than SYNC_QUEUED_TIMEOUT_SECONDS."""
    cutoff = now - timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT_SECONDS)
    return Q(sync_queued_at__isnull=True) | Q(sync_queued_at__lte=cutoff)


# The fan-out queues an account again after this fraction of its interval at the earliest (see the module docstring).
DUE_FRACTION = 0.9


def in_flight(now: datetime) -> Q:
    """Accounts with a fan-out run queued (younger than SYNC_QUEUED_TIMEOUT_SECONDS) or a run under way."""
    cutoff = now - timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT_SECONDS)
    return Q(sync_queued_at__gt=cutoff) | Q(sync_lease_until__gt=now)


def due(now: datetime) -> Q:
    """Accounts the fan-out has not queued within the last DUE_FRACTION of the interval."""
    return Q(sync_due_at__isnull=True) | Q(sync_due_at__lte=now)


def claim(account_id: int) -> str | None:
    """Take the account's lease for SYNC_LEASE_SECONDS; return its token, or None when a run holds it.

    One UPDATE: under concurrent claims PostgreSQL re-checks the condition on
    the row the winner wrote, so exactly one claim changes the row. Also None
    for an account that does not exist.
    """
    token = secrets.token_hex(16)  # 32 characters, the column's width
    now = timezone.now()
    changed = MailAccount.objects.filter(lease_free(now), pk=account_id).update(
        sync_lease_until=now + timedelta(seconds=settings.SYNC_LEASE_SECONDS), sync_lease_token=token
    )
    return token if changed == 1 else None


def renew(account_id: int, token: str) -> bool:
    """Push the lease SYNC_LEASE_SECONDS ahead; False when this token no longer holds it."""
    until = timezone.now() + timedelta(seconds=settings.SYNC_LEASE_SECONDS)
    return MailAccount.objects.filter(pk=account_id, sync_lease_token=token).update(sync_lease_until=until) == 1


def release(account_id: int, token: str) -> bool:
    """End the lease now; False when this token no longer holds it (it expired and another run took it)."""
    return MailAccount.objects.filter(pk=account_id, sync_lease_token=token).update(
        sync_lease_until=timezone.now(), sync_lease_token=""
    ) == 1


_current = threading.local()


def on_overrun(callback) -> None:
    """Call `callback()` (from another thread) if the current run passes SYNC_RUN_MAX_SECONDS.

    For shutting down a connection that blocks the run; outside a run (a
    migration's verify, the message page) nothing is registered. A connection
    opened after the run overran is shut down at once: the run must end, not
    carry on over a fresh connection while its lease expires.
    """
    renewal = getattr(_current, "renewal", None)
    if renewal is None:
        return
    with renewal.lock:
        if not renewal.overran:
            renewal.overrun_callbacks.append(callback)
            return
    callback()


class _Renewal(threading.Thread):
    """Renews one lease until stopped: a run longer than the lease keeps it, up to SYNC_RUN_MAX_SECONDS."""

    def __init__(self, account_id: int, token: str):
        super().__init__(name=f"sync-lease-{account_id}", daemon=True)
        self.account_id, self.token = account_id, token
        self.stopped = threading.Event()
        self.overrun_callbacks = []
        self.overran = False
        self.lock = threading.Lock()
        self.deadline = timezone.now() + timedelta(seconds=settings.SYNC_RUN_MAX_SECONDS)

    def run(self) -> None:
        interval = settings.SYNC_LEASE_SECONDS / 3
        try:
            while not self.stopped.wait(min(interval, max(0.0, (self.deadline - timezone.now()).total_seconds()))):
                if timezone.now() >= self.deadline:
                    self._overrun()
                    return
                if not renew(self.account_id, self.token):
                    # Only after a pause longer than the lease (a frozen process):
                    # another run may have started; the unique message key
                    # still keeps its rows single.
                    logger.warning("Sync lease of account %s was lost during the run", self.account_id)
                    return
        except Exception as error:  # noqa: BLE001 - a database hiccup: the lease expires instead, the run goes on
            logger.error("Sync lease of account %s could not be renewed (%s)", self.account_id, describe(error))
        finally:
            connections.close_all()  # this thread's own connections only

    def _overrun(self) -> None:
        logger.warning("Sync run of account %s passed SYNC_RUN_MAX_SECONDS: its connection is closed",
                       self.account_id)
        with self.lock:
            self.overran = True
            callbacks = list(self.overrun_callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - the connection may be gone already
                pass

    def stop(self) -> None:
        self.stopped.set()
        self.join()


@contextmanager
def held(account_id: int) -> Iterator[bool]:
    """Hold the account's lease for the block; yields False (and holds nothing) when another run has it.

    Renewed in the background while the block runs (at most
    SYNC_RUN_MAX_SECONDS), released when it ends, also by an exception. A
    killed process leaves the lease to expire.
    """
    token = claim(account_id)
    if token is None:
        yield False
        return
    renewal = _Renewal(account_id, token)
    renewal.start()
    _current.renewal = renewal
    try:
        yield True
    finally:
        _current.renewal = None
        renewal.stop()
        release(account_id, token)


def mark_queued(due: QuerySet, *, now: datetime, limit: int, busy: dict[str, int] | None = None) -> list[int]:
    """Lock up to `limit` due accounts, mark them queued at `now` and due again DUE_FRACTION of
    SYNC_INTERVAL_MIN_SECONDS later (the run sets the real next due time when it ends,
    sync.schedule); return their ids in the order to queue them.

    Which accounts: fair turns across destinations, at most
    SYNC_MAX_PER_DESTINATION per destination counting its `busy` accounts
    (sync.destinations.fair_turns); within a destination the longest due first
    (never queued ones first, then by sync_due_at, then least recently run).

    Call inside transaction.atomic() and queue the runs on commit. `due`: a
    MailAccount queryset without joins that leaves out leased, queued and not yet
    due accounts (selectors.accounts_due_for_sync). SKIP LOCKED: a second fan-out
    at the same moment takes other accounts instead of waiting for these, and
    PostgreSQL re-checks a row another transaction changed meanwhile, so an
    account just queued, leased or pushed ahead is not taken. That makes the
    mark a compare-and-swap: of any number of fan-outs, one queues the account
    per interval. Three queries (pick, lock, UPDATE) whatever the number of accounts.
    """
    if limit <= 0:
        return []
    # The pick takes no locks (PostgreSQL allows no FOR UPDATE with window functions): the lock
    # follows. Twice the batch is picked, in the same fair order and within the same caps, so
    # that rows another transaction holds are skipped and the next ones taken, not waited for.
    picked = destinations.fair_turns(due, limit=2 * limit, cap=settings.SYNC_MAX_PER_DESTINATION, busy=busy or {})
    if not picked:
        return []
    locked = set(due.filter(pk__in=picked).order_by("pk").select_for_update(skip_locked=True)
                 .values_list("pk", flat=True))
    ids = [pk for pk in picked if pk in locked][:limit]
    next_due = now + timedelta(seconds=settings.SYNC_INTERVAL_MIN_SECONDS * DUE_FRACTION)
    MailAccount.objects.filter(pk__in=ids).update(sync_queued_at=now, sync_due_at=next_due)
    return ids


def clear_queued(account_id: int, queued_at: datetime) -> bool:
    """The fan-out's run for `queued_at` was taken off the queue: clear that mark, not a newer one."""
    return MailAccount.objects.filter(pk=account_id, sync_queued_at=queued_at).update(sync_queued_at=None) == 1
