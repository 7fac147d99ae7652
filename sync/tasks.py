"""Periodic mail sync: V3 accounts from their cursors, V2 until its shutdown."""

from celery import shared_task

from sync import services


@shared_task(name="sync.tasks.sync_all_accounts")
def sync_all_accounts() -> int:
    account_ids = services.accounts_to_sync()
    for account_id in account_ids:
        sync_account.delay(account_id)
    return len(account_ids)


@shared_task(name="sync.tasks.sync_account", acks_late=True)
def sync_account(account_id: int) -> int:
    return services.sync_account(account_id)
