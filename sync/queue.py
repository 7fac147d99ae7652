"""Queueing tasks: a sync run by its name, and any task once a transaction commits.

The sync task is sent by its registered name: sync.tasks imports sync.runs, which
imports the engines, which use sync.services; sync.services and sync.runs queue
runs through here, so no module below sync.tasks imports it.
"""

import logging
from collections.abc import Callable
from datetime import datetime

from celery import current_app
from django.db import transaction

logger = logging.getLogger(__name__)

SYNC_ACCOUNT_TASK = "sync.tasks.sync_account"


def enqueue_sync(account_id: int, *, queued_at: datetime | None = None) -> None:
    """Queue one sync run of the account now.

    queued_at: the fan-out's queued mark, which the run clears (sync.leases);
    None for runs queued by anything else (a handoff, a new password, a re-connect).
    Raises what the broker client raises when the broker cannot be reached
    (kombu.exceptions.OperationalError); publish_on_commit does not.
    """
    current_app.send_task(SYNC_ACCOUNT_TASK, args=[account_id, queued_at.isoformat() if queued_at else ""])


def publish_on_commit(send: Callable[[], object], *, what: str) -> None:
    """Call send() (which queues a task) once the current transaction commits; at once outside one.

    The database row is the truth and is committed by then: a broker that
    cannot be reached (kombu raises OperationalError after its publish retries,
    about a second) must not turn a done request into an error page or crash a
    worker step after its work. The failure is logged at ERROR with `what`
    (ids only, never a secret), and the periodic safety nets pick the work up:
    the stuck-migration sweep (a migration in a worker step) and the sync
    fan-out (an account that is due).
    """

    def publish():
        try:
            send()
        except Exception as error:  # noqa: BLE001 - any broker failure; logged, and the sweeps take over
            logger.error("Could not queue %s: the broker failed (%s: %s); the periodic sweep picks it up",
                         what, type(error).__name__, str(error)[:200])

    transaction.on_commit(publish)


def enqueue_sync_on_commit(account_id: int) -> None:
    """Queue one sync run of the account after the commit (publish_on_commit: a broker outage is logged)."""
    publish_on_commit(lambda: enqueue_sync(account_id), what=f"a sync run of account {account_id}")
