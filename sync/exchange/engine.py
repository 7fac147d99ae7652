"""The V3 EWS engine (Exchange on-premises): incremental sync from SyncFolderItems states.

Like the IMAP engine, the first sync after the handoff also reads mail since
v3_since (V2's high-water mark minus the overlap window) and the dedup key
drops what V2 imported. A state the server refuses is rebuilt by sync.exchange.client,
which then re-reads the overlap window by date.
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from sync.exchange import client as ews
from sync.imap.client import MailboxError
from sync.models import FolderState, MailAccount
from sync.services import password_of, record_sync_result, record_v3_failure, store_messages


def sync(account: MailAccount) -> int:
    """One sync run of every folder that has an EWS cursor; returns new messages."""
    states = [state for state in account.folders.exclude(ews_sync_state="") if state.name in ews.EWS_FOLDERS]
    if not states:
        return 0
    added = 0
    try:
        with ews.mailbox_errors(), ews.open_account(ews.settings_of(account), password_of(account)) as client:
            for state in states:
                added += _sync_folder(client, account, state)
    except MailboxError as error:
        # Folders finished before the error keep their new state: nothing is fetched twice.
        record_v3_failure(account_id=account.pk, error_code=ews.error_code(error.code))
        return added
    record_sync_result(account_id=account.pk)
    return added


def _sync_folder(client, account: MailAccount, state: FolderState) -> int:
    first_sync = state.v3_synced_at is None
    overlap = timedelta(hours=settings.HANDOFF_OVERLAP_HOURS)
    result = ews.sync_folder(
        client, ews.EWS_FOLDERS[state.name], sync_state=state.ews_sync_state,
        since=state.v3_since if first_sync else None,
        resync_since=(state.v3_synced_at or timezone.now()) - overlap,
    )
    added = store_messages(account=account, folder=state.name, messages=result.messages, engine="v3")
    # Saved only after the messages are stored: a crash in between re-reads, and dedup absorbs it.
    FolderState.objects.filter(pk=state.pk).update(ews_sync_state=result.sync_state, v3_synced_at=timezone.now())
    return added
