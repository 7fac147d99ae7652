"""Credential submissions to one destination over its budget wait for a later window instead of failing.

sync.egress.check_rate refuses an attempt over a budget. For a submitted
password that is wrong for a company's own server: all its users share the
destination's budget. reserve_attempt queues such a submission into the next
ten-minute window with room (sync.models.AttemptBudget.take keeps every window
at the budget) and says when; the caller stores it with that time and the
migration sweeper runs it then.
"""

import time
from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from django.db import transaction
from django.db.models import F

from sync import egress
from sync.models import AttemptBudget
from sync.providers import PROVIDER_HOSTS


def current_window() -> int:
    """The budgets' window now: Unix time // RATE_WINDOW_SECONDS (one place, so tests can hold it still)."""
    return int(time.time() // egress.RATE_WINDOW_SECONDS)


def reserve_attempt(user_id: int | None, host: str, port: int) -> datetime | None:
    """egress.check_rate for a credential submission: over the destination's budget it is queued, not refused.

    Returns None when the attempt may be made now, or the (aware, UTC) start of
    the later window whose destination budget it took: the caller lets the
    worker try it then and tells the user when. Why: a company's own mail
    server has one budget (EGRESS_RATE_PER_DESTINATION per ten minutes) for
    all its users; refusing everyone over it made a rollout of 2,000 users a
    matter of retyping passwords for hours. Queued attempts still reach the
    server at no more than the budget's rate, so the budget keeps protecting it
    from a password sprayer; the sprayer's own limits are unchanged.

    Raises egress.RateLimited when the user's own budget (EGRESS_RATE_PER_USER,
    charged now, as in egress.check_rate) is used up, or when no window within the
    next EGRESS_RATE_QUEUE_WINDOWS has room left. A window's slot is taken for
    every key of the destination at once (one transaction), so an address that
    is full never leaves another's slot taken.
    """
    window = current_window()
    if user_id is not None and egress._count(f"user:{user_id}", window) > settings.EGRESS_RATE_PER_USER:
        raise egress.RateLimited("too many connection attempts (user)")
    canonical = egress._canonical_host(host)
    if canonical in PROVIDER_HOSTS:
        return None
    keys = [f"dest:{key}" for key in egress.destination_keys(canonical, port)]
    limit, last = settings.EGRESS_RATE_PER_DESTINATION, window + settings.EGRESS_RATE_QUEUE_WINDOWS
    # Windows already full are skipped with one query (a rollout fills many); _take_slot re-checks atomically.
    full = set(AttemptBudget.objects.filter(key__in=keys, window__gte=window, window__lte=last, attempts__gte=limit)
               .values_list("window", flat=True))
    for ahead in range(settings.EGRESS_RATE_QUEUE_WINDOWS + 1):
        if window + ahead in full:
            continue
        if _take_slot(keys, window + ahead, limit):
            if ahead == 0:
                return None
            return datetime.fromtimestamp((window + ahead) * egress.RATE_WINDOW_SECONDS, dt_timezone.utc)
    raise egress.RateLimited("too many connection attempts (dest, queue full)")


class _Full(Exception):
    """A key of the destination had no room left in the window (rolls back the keys taken before it)."""


def _take_slot(keys: list[str], window: int, limit: int) -> bool:
    """One attempt in `window` for every key, or for none of them (a savepoint): whether there was room."""
    try:
        with transaction.atomic():
            for key in keys:
                if not AttemptBudget.take(key=key, window=window, limit=limit):
                    raise _Full
    except _Full:
        return False
    return True


def refund(host: str, port: int) -> None:
    """A login the server accepted gives its slot back: the destination's budget counts failures.

    Called by the migration's verify step once the server accepted the
    password (sync never calls it). Why: EGRESS_RATE_PER_DESTINATION exists to
    stop guessing; a company's users who type their right password are not
    guessing, and with the slot given back 2,000 of them pass one server's
    budget of 100 per ten minutes as fast as the workers verify them, while
    wrong passwords still use it up (the issue's "budgets that fit a company
    rollout"). The slot goes back to the current window: the one it was taken
    from, unless the window turned between the submission and the check (then
    the current window gets one spare slot, never more than one per accepted
    login). The user's own budget is not given back.
    """
    canonical = egress._canonical_host(host)
    if canonical in PROVIDER_HOSTS:
        return
    window = current_window()
    keys = [f"dest:{key}" for key in egress.destination_keys(canonical, port)]
    AttemptBudget.objects.filter(key__in=keys, window=window, attempts__gt=0).update(attempts=F("attempts") - 1)
