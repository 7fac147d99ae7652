"""Heartbeats of the worker and of beat, for GET /health/ and compose's health checks.

The worker records one from a consumer bootstep every HEARTBEAT_SECONDS, so a
heartbeat means its consumer loop ran (it stops while the worker cannot reach
the broker: then the worker is not consuming either). Beat records one from its
scheduler's tick. Each goes to the database (Heartbeat, one row per role, seen
by every web process) and, when WORKER_HEARTBEAT_FILE / BEAT_TICK_FILE is set,
to a file whose modification time a container health check can read without
the database.

This module is imported by portal.celery before Django is set up: Django
models are imported inside the functions only.
"""

import logging
import time
from pathlib import Path

from celery import bootsteps
from celery.beat import PersistentScheduler

logger = logging.getLogger(__name__)

WORKER = "worker"
# A worker that consumes the control queue (the fan-out, the sweeper: CELERY_CONTROL_QUEUE) records this
# one; the same process may record both. Without it nothing queues syncs, whatever "worker" says.
CONTROL = "control_worker"
BEAT = "beat"


def record(name: str, *, count: int = 0) -> None:
    """Store "name is alive now"; never raises (a failed heartbeat must not stop the worker or beat).

    name: WORKER, BEAT or an IMAP IDLE listener shard ("imap_idle:i/N", which
    passes its open connections as count). The database write is one UPDATE (an INSERT the first
    time); a database outage is logged and the next beat tries again.
    """
    from django.conf import settings
    from django.db import DatabaseError, IntegrityError, close_old_connections, connection
    from django.utils import timezone

    from portal.models import Heartbeat

    path = {WORKER: settings.WORKER_HEARTBEAT_FILE, CONTROL: settings.WORKER_HEARTBEAT_FILE,
            BEAT: settings.BEAT_TICK_FILE}.get(name, "")
    if path:
        try:
            Path(path).touch()
        except OSError as error:
            logger.warning("%s heartbeat file %s: %s", name, path, error.strerror)
    # Worker timers and beat live for weeks: a connection the database dropped
    # (restart, idle timeout) must not fail every heartbeat after it. (Not
    # inside a transaction: that would close it, as in a caller's test.)
    if not connection.in_atomic_block:
        close_old_connections()
    now = timezone.now()
    try:
        if not Heartbeat.objects.filter(name=name).update(seen_at=now, count=count):
            try:
                Heartbeat.objects.create(name=name, seen_at=now, count=count)
            except IntegrityError:  # another process created it meanwhile
                Heartbeat.objects.filter(name=name).update(seen_at=now, count=count)
    except DatabaseError as error:
        logger.warning("%s heartbeat not recorded: %s", name, type(error).__name__)
        connection.close()


def roles(app) -> list[str]:
    """The heartbeats a worker of `app` records: WORKER when it consumes the default queue ("celery"),
    CONTROL when it consumes CELERY_CONTROL_QUEUE; both for a worker started without -Q."""
    from django.conf import settings

    queues = app.amqp.queues
    consumed = set(queues.consume_from or queues)
    names = [WORKER] if "celery" in consumed else []
    return names + ([CONTROL] if settings.CELERY_CONTROL_QUEUE in consumed else [])


def _record_all(names) -> None:
    for name in names:
        record(name)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Consumer bootstep: record its roles (WORKER, CONTROL) at start and every HEARTBEAT_SECONDS on the
    consumer's timer.

    Celery stops and starts consumer steps around a broker reconnect, so no
    heartbeat is written while the worker cannot consume.
    """

    def __init__(self, parent, **kwargs):
        self.tref = None
        super().__init__(parent, **kwargs)

    def start(self, parent):
        from django.conf import settings

        names = roles(parent.app)
        _record_all(names)
        self.tref = parent.timer.call_repeatedly(settings.HEARTBEAT_SECONDS, _record_all, (names,))

    def stop(self, parent):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


class RecordingScheduler(PersistentScheduler):
    """Beat's default scheduler (schedule file given by -s) that also records beat's last tick.

    Beat sleeps until the next task is due; tick() returns that sleep, capped
    here at HEARTBEAT_SECONDS so that the tick is recorded that often even when
    every periodic task runs less often.
    """

    _recorded_at = float("-inf")

    def tick(self, *args, **kwargs):
        from django.conf import settings

        interval = settings.HEARTBEAT_SECONDS
        next_in = super().tick(*args, **kwargs)
        if time.monotonic() - self._recorded_at >= interval:
            record(BEAT)
            self._recorded_at = time.monotonic()
        return min(next_in, interval)
