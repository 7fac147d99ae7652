"""The V3 IMAP engine: every folder, every run, from per-folder UID cursors (RFC 3501, RFC 7162).

Each run LISTs the folders (sync.imap.folders), so a folder created after the
migration is synced from its first message, a renamed one keeps its state (the
server keeps UIDVALIDITY across RENAME, RFC 3501 section 6.3.5) and a deleted
one stops. A folder's first V3 run (after the handoff, a new folder, a changed
UIDVALIDITY) reads the whole folder's headers: whatever its Date, a message
that is in the folder and not in the CRM is imported once, and what V2 or
another folder stored already is recognised by its identity (sync.identity).
Later runs fetch only UIDs above the cursor, and none when UIDNEXT is unchanged.
"""

from django.db import transaction
from django.utils import timezone

from sync.errors import MailboxError
from sync.imap import client as imap
from sync.imap import folders as imap_folders
from sync.models import FolderState, MailAccount
from sync.services import (
    imap_settings_of, password_of, record_skipped, record_sync_result, record_v3_failure, store_messages,
)


def sync(account: MailAccount) -> int:
    """One run over all syncable folders; returns the number of new messages.

    Errors: a login or connection failure is recorded on the account
    (record_v3_failure) and ends the run; folders finished before it keep
    their new cursors.
    """
    try:
        client = imap.open_mailbox(imap_settings_of(account), password_of(account))
    except MailboxError as error:
        record_v3_failure(account_id=account.pk, error_code=error.code)
        return 0
    added = 0
    try:
        names = imap_folders.syncable_folders(client)
        cursors = {name: imap.folder_cursor(client, name) for name in names}
        for state in reconcile_folders(account, cursors):
            added += _sync_folder(client, account, state, cursors[state.name])
    except (OSError, imap.IMAPClientError):
        record_sync_result(account_id=account.pk, error_code="protocol")
        return added
    finally:
        imap.close(client)
    record_sync_result(account_id=account.pk)
    return added


def reconcile_folders(account: MailAccount, cursors: dict[str, dict]) -> list[FolderState]:
    """Bring the account's FolderState rows in line with the server's folders; return the rows to sync.

    A listed folder without a row takes over the row of a vanished folder with
    the same UIDVALIDITY (a rename: its cursor stays valid), else gets a new
    row (first run reads it whole). Rows of folders no longer listed are
    deleted; V2's row for INBOX is kept (its high-water mark is history).
    """
    with transaction.atomic():
        rows = {state.name: state for state in FolderState.objects.select_for_update().filter(account=account)}
        vanished = {name: state for name, state in rows.items() if name not in cursors}
        result = []
        for name, cursor in cursors.items():
            state = rows.get(name)
            if state is None:
                state = _renamed_from(vanished, cursor)
                if state is not None:
                    del vanished[state.name]
                    state.name = name
                    state.save(update_fields=["name"])
                else:
                    state = FolderState.objects.create(account=account, name=name)
            result.append(state)
        gone = [state.pk for state in vanished.values() if state.uidvalidity is not None]
        FolderState.objects.filter(pk__in=gone).delete()
    return result


def _renamed_from(vanished: dict[str, FolderState], cursor: dict) -> FolderState | None:
    matches = [s for s in vanished.values() if s.uidvalidity is not None and s.uidvalidity == cursor["uidvalidity"]]
    # Two vanished folders with the same UIDVALIDITY: no way to tell which one moved; start fresh.
    return matches[0] if len(matches) == 1 else None


def _sync_folder(client, account: MailAccount, state: FolderState, cursor: dict) -> int:
    whole_folder = state.v3_synced_at is None or state.uidvalidity != cursor["uidvalidity"]
    if not whole_folder and cursor["uidnext"] == state.uidnext:
        return 0  # nothing arrived since the last run: no SELECT, no FETCH
    last_seen = 0 if whole_folder else (state.last_seen_uid or 0)
    client.select_folder(state.name, readonly=True)
    # "n:*" always matches the newest message even if its UID is below n.
    uids = [uid for uid in client.search(["UID", f"{last_seen + 1}:*"]) if uid > last_seen]
    skipped, added = [], 0
    for batch in imap.fetch_batches(client, uids, skipped=skipped):
        added += store_messages(account=account, folder=state.name, messages=batch, engine="v3")
    for uid, reason, detail in skipped:
        record_skipped(account_id=account.pk, folder=state.name, reference=f"uid:{cursor['uidvalidity']}:{uid}",
                       reason=reason, detail=detail)
    # The cursor moves past every UID the SEARCH found, also past messages that were
    # expunged meanwhile or could not be read (those are recorded, never retried forever).
    FolderState.objects.filter(pk=state.pk).update(
        uidvalidity=cursor["uidvalidity"], uidnext=cursor["uidnext"], highestmodseq=cursor["highestmodseq"],
        last_seen_uid=max([last_seen, *uids]), v3_synced_at=timezone.now(),
    )
    return added
