"""Periodic mail sync: V3 accounts from their cursors, V2 until its shutdown."""

from datetime import datetime

from celery import shared_task

from sync import runs


@shared_task(name="sync.tasks.sync_all_accounts")
def sync_all_accounts() -> int:
    """Beat's fan-out: queue a run for each account due now (a bounded batch); returns how many."""
    return len(runs.accounts_to_sync())


@shared_task(name="sync.tasks.sync_account", acks_late=True)
def sync_account(account_id: int, queued_at: str = "") -> int:
    """One run for one account; returns new messages (0 when another run of it is under way).

    queued_at: ISO 8601 time of the fan-out's queued mark; "" when queued by
    anything else (a migration's handoff, a new password, a re-connect).
    """
    return runs.sync_account(account_id, queued_at=datetime.fromisoformat(queued_at) if queued_at else None)


@shared_task(name="sync.tasks.send_reconnect_mail", acks_late=True)
def send_reconnect_mail(account_id: int, followup: bool = False) -> bool:
    from sync import notifications

    return notifications.send_reconnect_mail(account_id, followup=followup)


@shared_task(name="sync.tasks.send_reconnect_followups")
def send_reconnect_followups() -> int:
    """Beat: the follow-up mail for accounts still waiting in "Neu verbinden" (claimed per account)."""
    from sync import notifications

    return len(notifications.send_reconnect_followups())


@shared_task(name="sync.tasks.maintain_graph_subscriptions")
def maintain_graph_subscriptions() -> dict:
    """Beat: create, renew and remove Microsoft Graph subscriptions (sync.microsoft.subscriptions.maintain)."""
    from sync.microsoft import subscriptions

    return subscriptions.maintain()


@shared_task(name="sync.tasks.graph_lifecycle", acks_late=True)
def graph_lifecycle(account_id: int, event: str) -> None:
    """A verified Graph lifecycle notification (ids and the event name only, never the clientState)."""
    from sync.microsoft import subscriptions

    subscriptions.handle_lifecycle(account_id, event)
