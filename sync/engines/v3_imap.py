"""The V3 IMAP engine: incremental sync from per-folder UID cursors.

The first sync after the handoff also searches mail since v3_since (V2's
high-water mark minus the overlap window) so nothing V2 missed is lost; the
dedup key skips whatever V2 imported already.
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from sync import imap
from sync.imap import MailboxError
from sync.models import FolderState, MailAccount
from sync.services import imap_settings_of, password_of, record_sync_result, record_v3_failure, store_messages


def sync(account: MailAccount) -> int:
    try:
        client = imap.open_mailbox(imap_settings_of(account), password_of(account))
    except MailboxError as error:
        record_v3_failure(account_id=account.pk, error_code=error.code)
        return 0
    added = 0
    try:
        for state in account.folders.exclude(uidvalidity=None):
            added += _sync_folder(client, account, state)
    except (OSError, imap.IMAPClientError):
        record_sync_result(account_id=account.pk, error_code="protocol")
        return added
    finally:
        imap.close(client)
    record_sync_result(account_id=account.pk)
    return added


def _sync_folder(client, account: MailAccount, state: FolderState) -> int:
    cursor = imap.folder_cursor(client, state.name)
    first_sync = state.v3_synced_at is None
    last_seen = state.last_seen_uid or 0
    since = state.v3_since
    if cursor["uidvalidity"] != state.uidvalidity:
        # The server renumbered the folder: UIDs mean nothing any more. Look
        # at recent mail again by date; the dedup key prevents duplicates.
        last_seen = 0
        since = (state.v3_synced_at or timezone.now()) - timedelta(hours=settings.HANDOFF_OVERLAP_HOURS)
        first_sync = True
    elif not first_sync and cursor["uidnext"] == state.uidnext:
        return 0  # nothing arrived since the last sync: no SELECT, no FETCH
    client.select_folder(state.name, readonly=True)
    uids = set(client.search(["UID", f"{last_seen + 1}:*"]))
    # "n:*" always matches the newest message even if its UID is below n.
    uids = {uid for uid in uids if uid > last_seen}
    if first_sync and since:
        uids.update(client.search(["SINCE", since.date()]))
    messages = imap.fetch_messages(client, sorted(uids))
    if first_sync and since:
        # SINCE has day granularity: keep only what is inside the window.
        messages = [m for m in messages if m.uid > last_seen or not m.received_at or m.received_at >= since]
    added = store_messages(account=account, folder=state.name, messages=messages, engine="v3")
    newest = max([last_seen] + [m.uid for m in messages if m.uid > last_seen])
    FolderState.objects.filter(pk=state.pk).update(
        uidvalidity=cursor["uidvalidity"], uidnext=cursor["uidnext"], highestmodseq=cursor["highestmodseq"],
        last_seen_uid=newest, v3_synced_at=timezone.now(),
    )
    return added
