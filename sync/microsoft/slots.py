"""At most MS_GRAPH_MAILBOX_CONCURRENCY Graph requests per mailbox at a time, in every thread and process.

Microsoft Graph throttling limits, Outlook service limits (learn.microsoft.com/
graph/throttling-limits#outlook-service-limits): per app and mailbox, 4
concurrent requests and 10,000 requests per 10 minutes. A fifth request in
flight is answered 429 ApplicationThrottled "Application is over its
MailboxConcurrency limit." The sync, a migration's verify, a re-connect and
the message page (web processes) may all read one mailbox at once, so the
limit is kept in the database, which every process shares: a counting
semaphore of one row per slot (GraphSlot), taken by compare-and-swap and
given back after the request. A slot whose holder died (a killed process)
expires after SLOT_SECONDS. The 10,000 requests per 10 minutes are left to
Graph's 429 and Retry-After (graph.Graph.get retries).

Call it outside a transaction: a slot taken inside one is held until it ends.
"""

import hashlib
import secrets
import time
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from sync.microsoft.client import MicrosoftError
from sync.models import GraphSlot

FIRST_WAIT = 0.02  # seconds between tries for a slot, doubling up to MAX_POLL
MAX_POLL = 0.5


def slot_seconds() -> float:
    """How long a slot may be held: longer than any request can take (connect + read timeouts, a slow body)."""
    return 4 * settings.MS_TIMEOUT + 5


def mailbox_key(name: str) -> str:
    return hashlib.sha256(name.strip().lower().encode()).hexdigest()


@contextmanager
def slot(mailbox: str):
    """Hold one of the mailbox's slots for the block.

    Waits (polling, bounded by 2 x MS_TIMEOUT seconds) while all are taken;
    then raises MicrosoftError("ms_mailbox_busy", permanent=False): the next
    run tries again.
    """
    held = acquire(mailbox)
    try:
        yield
    finally:
        release(held)


def acquire(mailbox: str) -> tuple[int, str]:
    """Take a free or expired slot; returns (row id, holder token) for release()."""
    key, limit = mailbox_key(mailbox), settings.MS_GRAPH_MAILBOX_CONCURRENCY
    token = secrets.token_hex(8)
    _ensure_rows(key, limit)
    deadline = time.monotonic() + 2 * settings.MS_TIMEOUT
    wait = FIRST_WAIT
    while True:
        taken = _take(key, limit, token)
        if taken is not None:
            return taken, token
        if time.monotonic() >= deadline:
            raise MicrosoftError("ms_mailbox_busy", permanent=False)
        time.sleep(wait)
        wait = min(wait * 2, MAX_POLL)


def release(held: tuple[int, str]) -> None:
    row_id, token = held
    GraphSlot.objects.filter(pk=row_id, holder=token).update(holder="", expires_at=None)


def _ensure_rows(key: str, limit: int) -> None:
    if GraphSlot.objects.filter(mailbox=key, slot__lt=limit).count() < limit:
        GraphSlot.objects.bulk_create([GraphSlot(mailbox=key, slot=n) for n in range(limit)], ignore_conflicts=True)


def _take(key: str, limit: int, token: str) -> int | None:
    now = timezone.now()
    free = Q(holder="") | Q(expires_at__lt=now)
    with transaction.atomic():
        # SKIP LOCKED: a slot another process is taking right now is not waited for. The update
        # repeats the condition (compare-and-swap) for databases without row locks (SQLite).
        for row_id in GraphSlot.objects.select_for_update(skip_locked=True).filter(
                free, mailbox=key, slot__lt=limit).values_list("pk", flat=True)[:limit]:
            if GraphSlot.objects.filter(free, pk=row_id).update(
                    holder=token, expires_at=now + timedelta(seconds=slot_seconds())):
                return row_id
    return None
