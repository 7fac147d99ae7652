"""The endpoint Microsoft Graph posts change and lifecycle notifications to (sync.microsoft.subscriptions).

Graph's rules ("Receive change notifications through webhooks"): a
validation request is a POST with ?validationToken=..., answered 200
text/plain with the token within 10 seconds; a notification batch is a
POST of {"value": [...]}, answered 2xx within 3 seconds, else Graph
retries and, when slow often, drops notifications. So the view only
checks and queues: each item's subscriptionId must be ours and its
clientState match (constant-time); a verified change queues one delta sync
of the account (debounced), a verified lifecycle event a task with the
account id and the event name. Nothing else of a notification is used.

Abuse: CSRF-exempt (Graph has no token), bodies capped at
MS_GRAPH_NOTIFY_MAX_BYTES, at most MS_GRAPH_NOTIFY_RATE_PER_IP requests
per minute per client address and MS_GRAPH_NOTIFY_RATE_TOTAL in all
(429), a batch without any verifiable item is refused (403) and logged
with its code. clientState is never logged.
"""

import json
import logging
import time
from collections import Counter

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from portal.login_limits import client_ip
from sync import queue
from sync.microsoft import subscriptions
from sync.models import GraphSubscription

logger = logging.getLogger(__name__)

LIFECYCLE_TASK = "sync.tasks.graph_lifecycle"
# Graph batches notifications; more items than this in one POST is not Graph.
MAX_ITEMS = 1000
MAX_VALIDATION_TOKEN = 2048


def _over_limit(ip: str) -> bool:
    """Count this request in the minute's counters (the cache); True when one is over its limit."""
    minute = int(time.time() // 60)
    over = False
    for key, limit in ((f"graphpush:rate:ip:{ip}:{minute}", settings.MS_GRAPH_NOTIFY_RATE_PER_IP),
                       (f"graphpush:rate:all:{minute}", settings.MS_GRAPH_NOTIFY_RATE_TOTAL)):
        cache.add(key, 0, timeout=120)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=120)
            count = 1
        over = over or count > limit
    return over


def queue_sync(account_id: int) -> None:
    """One delta sync now, and at most one more at the end of the debounce window (mail that arrives
    while the first run reads the inbox); further notifications in the window are covered by those."""
    window = settings.MS_GRAPH_NOTIFY_DEBOUNCE_SECONDS
    if window == 0 or cache.add(f"graphpush:now:{account_id}", 1, timeout=window):
        queue.enqueue_sync(account_id)
    elif cache.add(f"graphpush:later:{account_id}", 1, timeout=window):
        current_app.send_task(queue.SYNC_ACCOUNT_TASK, args=[account_id, ""], countdown=window)


def _validation(request: HttpRequest) -> HttpResponse:
    token = request.GET.get("validationToken", "")
    if not token or len(token) > MAX_VALIDATION_TOKEN:
        return HttpResponse(status=400)
    response = HttpResponse(token, content_type="text/plain; charset=utf-8")
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _items(request: HttpRequest) -> list | None:
    """The batch's items, or None when the body is too big or not Graph's shape."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length <= 0 or length > settings.MS_GRAPH_NOTIFY_MAX_BYTES:
        return None
    try:
        payload = json.loads(request.read(settings.MS_GRAPH_NOTIFY_MAX_BYTES + 1)[:settings.MS_GRAPH_NOTIFY_MAX_BYTES])
    except (ValueError, UnicodeDecodeError, RecursionError):  # deeply nested arrays exhaust json's recursion
        return None
    items = payload.get("value") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items or len(items) > MAX_ITEMS:
        return None
    return items


@csrf_exempt
@require_POST
def notifications(request: HttpRequest, lifecycle: bool = False) -> HttpResponse:
    """POST from Graph: a validation (200 + token), or a batch of notifications (202 when any verified)."""
    ip = client_ip(request) or "-"
    if _over_limit(ip):
        logger.warning("Graph notification endpoint: rate limit exceeded (graph_notify_rate_limited)")
        return HttpResponse(status=429, headers={"Retry-After": "60"})
    if "validationToken" in request.GET:
        return _validation(request)
    items = _items(request)
    if items is None:
        logger.warning("Graph notification refused: graph_notify_malformed")
        return HttpResponse(status=400)
    verified, accounts, events = 0, set(), set()
    # One log line per refusal code and batch, with the count: a forged batch of MAX_ITEMS items is one
    # line, not a thousand (at MS_GRAPH_NOTIFY_RATE_PER_IP such batches a minute).
    refused = Counter()
    for item in items:
        if not isinstance(item, dict):
            refused["graph_notify_malformed"] += 1
            continue
        row, code = subscriptions.verify(str(item.get("subscriptionId") or ""), item.get("clientState") or "")
        if row is None:
            refused[code] += 1
            continue
        verified += 1
        event = item.get("lifecycleEvent")
        if event:
            if event in subscriptions.LIFECYCLE_EVENTS:
                events.add((row.account_id, str(event)))
            else:
                logger.warning("Graph lifecycle event of account %s not known: graph_notify_unknown_event",
                               row.account_id)
        elif not lifecycle:
            accounts.add(row.account_id)
    for code, count in sorted(refused.items()):
        logger.warning("Graph notification refused: %s (%d of %d items)", code, count, len(items))
    if not verified:
        return HttpResponse(status=403)
    GraphSubscription.objects.filter(account_id__in={a for a in accounts} | {a for a, _ in events}).update(
        notified_at=timezone.now())
    for account_id in sorted(accounts):
        queue_sync(account_id)
    for account_id, event in sorted(events):
        current_app.send_task(LIFECYCLE_TASK, args=[account_id, event])
    return HttpResponse(status=202)


@csrf_exempt
@require_POST
def lifecycle_notifications(request: HttpRequest) -> HttpResponse:
    """POST from Graph to lifecycleNotificationUrl: the same checks; only lifecycle events act here."""
    return notifications(request, lifecycle=True)
