"""Queueing a sync run without importing the task module (which sits above the engines).

The task is sent by its registered name: sync.tasks imports sync.runs, which
imports the engines, which use sync.services; sync.services and sync.runs queue
runs through here, so no module below sync.tasks imports it.
"""

from datetime import datetime

from celery import current_app

SYNC_ACCOUNT_TASK = "sync.tasks.sync_account"


def enqueue_sync(account_id: int, *, queued_at: datetime | None = None) -> None:
    """Queue one sync run of the account (call it from transaction.on_commit).

    queued_at: the fan-out's queued mark, which the run clears (sync.leases);
    None for runs queued by anything else (a handoff, a new password, a re-connect).
    Raises what the broker client raises when the broker cannot be reached.
    """
    current_app.send_task(SYNC_ACCOUNT_TASK, args=[account_id, queued_at.isoformat() if queued_at else ""])
