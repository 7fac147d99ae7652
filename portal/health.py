"""What GET /health/ reports: each dependency of the portal, without secrets or host names.

Required (any of them down: HTTP 503, "status": "error"): the database, the
cache (Redis in production; every page reads the banner from it) and the
Celery broker (starting a migration queues a task). Reported but not required
(stale or missing: HTTP 200, "status": "degraded"): the heartbeats of the worker
(default queue: sync runs, migration steps), of the control worker (the control
queue: the fan-out and the sweeper; one process may be both) and beat's last tick. Web processes keep serving pages without them, and a load
balancer or compose restarting the web server would not bring them back; the
worker and beat have their own container health checks (docker-compose.yml).
Informational only: the IMAP IDLE listener ("imap_idle": live shards, the IDLE
connections and the EWS pull subscriptions they hold, from their heartbeat rows) and
Graph change notifications ("graph_push": on or off, live and failed subscriptions);
without them mail still arrives by polling, so they never change the status. So is the
sync backlog ("sync_backlog": accounts due, queued and running, and how long the longest
due one has waited; sync.selectors.sync_backlog), for monitoring to graph.
"""

import logging
import os
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone
from django.utils.crypto import get_random_string

from portal.heartbeats import BEAT, CONTROL, WORKER

logger = logging.getLogger(__name__)

REQUIRED = ("database", "cache", "broker")
# A dependency that does not answer within this many seconds counts as down.
TIMEOUT_SECONDS = 3


def report() -> tuple[int, dict]:
    """(HTTP status, body) for GET /health/.

    body: {"status": "ok" | "degraded" | "error",
           "checks": {"database": "ok" | "down", "cache": ..., "broker": ...,
                      "worker": {"status": "ok" | "stale" | "missing" | "unknown", "age_seconds": int | None},
                      "control_worker": {...}, "beat": {...},
                      "imap_idle": {"status": "ok" | "stale" | "missing" | "unknown",
                                    "shards": int, "connections": int | None,
                                    "ews_subscriptions": int | None},
                      "sync_backlog": {"due": int, "queued": int, "running": int, "oldest_due_seconds": int}
                                      (all None when the database is down),
                      "graph_push": {"status": "on" | "off" | "unknown", "subscriptions": int | None,
                                     "failed": int | None}}}
    Ages are whole seconds since the last heartbeat; "unknown" when the database is down.
    """
    checks = {
        "database": _state(_database_answers, "database"),
        "cache": _state(_cache_answers, "cache"),
        "broker": _state(_broker_answers, "broker"),
    }
    checks.update(_heartbeats(database_up=checks["database"] == "ok"))
    checks["imap_idle"] = _imap_idle(database_up=checks["database"] == "ok")
    checks["sync_backlog"] = _sync_backlog(database_up=checks["database"] == "ok")
    checks["graph_push"] = _graph_push(database_up=checks["database"] == "ok")
    if any(checks[name] != "ok" for name in REQUIRED):
        status = "error"
    elif any(checks[name]["status"] != "ok" for name in (WORKER, CONTROL, BEAT)):
        status = "degraded"
    else:
        status = "ok"
    return (503 if status == "error" else 200), {"status": status, "checks": checks}


def _state(check, name: str) -> str:
    try:
        check()
    except Exception as error:  # noqa: BLE001 - whatever fails, the dependency is down for the portal
        # The class name only: messages of broker and database errors can name hosts and users.
        logger.warning("health: %s is down (%s)", name, type(error).__name__)
        return "down"
    return "ok"


def _database_answers() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _cache_answers() -> None:
    # A write and a read back: a Redis that answers reads but refuses writes
    # (a full disk with stop-writes-on-bgsave-error) breaks pages too.
    key, token = "health:probe", get_random_string(12)
    cache.set(key, token, timeout=30)
    if cache.get(key) != token:
        raise RuntimeError("the cache did not return what was stored")


def _broker_answers() -> None:
    from portal.celery import app

    with app.connection_for_write() as broker:
        if str(app.conf.broker_url).startswith("filesystem://"):
            # The embedded broker is a folder that web and worker share: it must be writable.
            folder = app.conf.broker_transport_options.get("data_folder_in", "")
            if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
                raise RuntimeError("the broker folder is missing or read-only")
            return
        # Connecting a Redis channel sends PING; no retries: down now means down.
        broker.ensure_connection(max_retries=0, timeout=TIMEOUT_SECONDS)


def _heartbeats(*, database_up: bool) -> dict:
    from portal.models import Heartbeat

    if not database_up:
        return {name: {"status": "unknown", "age_seconds": None} for name in (WORKER, CONTROL, BEAT)}
    seen = dict(Heartbeat.objects.filter(name__in=(WORKER, CONTROL, BEAT)).values_list("name", "seen_at"))
    now = timezone.now()
    result = {}
    for name in (WORKER, CONTROL, BEAT):
        if name not in seen:
            result[name] = {"status": "missing", "age_seconds": None}
            continue
        age = max(0, int((now - seen[name]).total_seconds()))
        result[name] = {"status": "ok" if age <= settings.HEARTBEAT_STALE_SECONDS else "stale", "age_seconds": age}
    return result


def _imap_idle(*, database_up: bool) -> dict:
    """The IMAP IDLE listener shards with a heartbeat fresher than IMAP_IDLE_STALE_SECONDS, and
    the IDLE connections and EWS pull subscriptions they hold (sync.imap.idle: one "imap_idle:i/N" and one
    "ews_pull:i/N" row per shard). "stale": rows exist, none is fresh. One query."""
    from portal.models import Heartbeat

    if not database_up:
        return {"status": "unknown", "shards": 0, "connections": None, "ews_subscriptions": None}
    rows = list(Heartbeat.objects.filter(name__regex=r"^(imap_idle|ews_pull):").values_list("name", "seen_at", "count"))
    fresh_after = timezone.now() - timedelta(seconds=settings.IMAP_IDLE_STALE_SECONDS)
    idle = [(seen_at, count) for name, seen_at, count in rows if name.startswith("imap_idle:")]
    fresh = [count for seen_at, count in idle if seen_at >= fresh_after]
    ews = sum(count for name, seen_at, count in rows if name.startswith("ews_pull:") and seen_at >= fresh_after)
    status = "ok" if fresh else ("stale" if idle else "missing")
    return {"status": status, "shards": len(fresh), "connections": sum(fresh), "ews_subscriptions": ews}


def _sync_backlog(*, database_up: bool) -> dict:
    """sync.selectors.sync_backlog now; all None when the database is down or the figures cannot be
    read (the V2 shutdown date comes through the cache, which may be the part that is down)."""
    from sync.runs import v2_running
    from sync.selectors import sync_backlog

    unknown = {"due": None, "queued": None, "running": None, "oldest_due_seconds": None}
    if not database_up:
        return unknown
    try:
        return sync_backlog(v2_running=v2_running())
    except Exception as error:  # noqa: BLE001 - informational only: /health/ must still answer
        logger.warning("health: sync backlog unknown (%s)", type(error).__name__)
        return unknown


def _graph_push(*, database_up: bool) -> dict:
    """Microsoft Graph change notifications (sync.microsoft.subscriptions): whether they are on
    (MS_GRAPH_NOTIFICATIONS, SITE_URL public), the live subscriptions, and the rows whose last
    subscribe or renewal failed (their error_code is in the admin). One query when on."""
    from django.db.models import Count, Q

    from sync.microsoft import subscriptions
    from sync.models import GraphSubscription

    if not subscriptions.enabled():
        return {"status": "off", "subscriptions": 0, "failed": 0}
    if not database_up:
        return {"status": "unknown", "subscriptions": None, "failed": None}
    counts = GraphSubscription.objects.aggregate(
        live=Count("pk", filter=Q(expires_at__gt=timezone.now()) & ~Q(subscription_id="")),
        failed=Count("pk", filter=~Q(error_code="")))
    return {"status": "on", "subscriptions": counts["live"], "failed": counts["failed"]}
