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
from imapclient.exceptions import IMAPClientAbortError

from sync.errors import MailboxError
from sync.imap import client as imap
from sync.imap import status as imap_status
from sync.imap.session import Session
from sync.models import FolderState, MailAccount
from sync.services import (
    imap_settings_of, password_of, record_skipped, record_sync_result, record_v3_failure, store_messages,
)


def sync(account: MailAccount, *, access_token: str = "") -> int:
    """One run over all syncable folders; returns the number of new messages.

    access_token: log in with XOAUTH2 instead of the stored password (sync.google.engine).

    Errors: a login failure is recorded on the account (record_v3_failure) and
    ends the run. A folder the server refuses to open, a folder name too long
    to keep, and a message the server cannot deliver are recorded
    (SkippedMessage, admin) and the rest of the mailbox syncs; a connection
    that breaks for good ends the run with "protocol" ("too_large" /
    "too_slow" when an answer passed a cap of sync.imap.client), folders
    finished before it keep their new cursors. A message over
    IMAP_MAX_MESSAGE_BYTES is recorded as skipped (too_large).
    """
    try:
        password = "" if access_token else password_of(account)
        connection = Session(imap_settings_of(account), password, access_token=access_token)
    except MailboxError as error:
        record_v3_failure(account_id=account.pk, error_code=error.code)
        return 0
    added, empty = 0, []
    try:
        cursors = _cursors(connection.client, account)
        for state in reconcile_folders(account, cursors):
            cursor = cursors[state.name]
            if _unchanged(state, cursor):
                continue  # nothing arrived since the last run: no SELECT, no SEARCH, no query
            if _empty_first_read(state, cursor):
                empty.append(state)
                continue
            added += _sync_folder_isolated(connection, account, state, cursor)
        _record_empty_folders(empty, cursors)
    except (OSError, imap.IMAPClientError, MailboxError) as error:
        # An answer over a cap that no message can be blamed for (LIST, STATUS, SEARCH): too_large / too_slow.
        code = error.code if isinstance(error, MailboxError) else imap.error_code(error)
        record_sync_result(account_id=account.pk, error_code=code)
        return added
    finally:
        connection.close()
    record_sync_result(account_id=account.pk)
    return added


def _cursors(client, account: MailAccount) -> dict[str, dict]:
    """Cursors of every syncable folder in one or two round trips (sync.imap.status); a folder the
    server will not report on, or whose name is too long to keep, is recorded and left out."""
    cursors, problems = imap_status.syncable_cursors(client)
    for folder, reason, detail in problems:
        record_skipped(account_id=account.pk, folder=folder, reference="folder", reason=reason, detail=detail)
    return cursors


def _sync_folder_isolated(connection: Session, account: MailAccount, state: FolderState, cursor: dict) -> int:
    try:
        return _sync_folder(connection, account, state, cursor)
    except IMAPClientAbortError:
        raise
    except imap.IMAPClientError as error:  # the server refused this folder (SELECT/SEARCH): the others go on
        record_skipped(account_id=account.pk, folder=state.name, reference="folder", reason="folder_unreadable",
                       detail=type(error).__name__)
        return 0


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


def _whole_folder(state: FolderState, cursor: dict) -> bool:
    """The folder is read whole this run: its first V3 run, or the server renumbered it (UIDVALIDITY)."""
    return state.v3_synced_at is None or state.uidvalidity != cursor["uidvalidity"]


def _unchanged(state: FolderState, cursor: dict) -> bool:
    return not _whole_folder(state, cursor) and cursor["uidnext"] == state.uidnext


def _empty_first_read(state: FolderState, cursor: dict) -> bool:
    """A whole-folder read of a folder STATUS reports empty (MESSAGES 0): there is nothing to SELECT or
    SEARCH for. A folder that holds messages is read on its first run even when its UIDNEXT did not
    move since the verify: those messages may never have reached the CRM (V2 polled INBOX only)."""
    return _whole_folder(state, cursor) and cursor.get("messages") == 0


def _record_empty_folders(states: list[FolderState], cursors: dict[str, dict]) -> None:
    """Record the cursors of folders found empty (_empty_first_read): one UPDATE for all of them.

    Every UID a message gets from now on is at least UIDNEXT (RFC 3501 section
    2.3.1.1), so the cursor starts just below it.
    """
    now = timezone.now()
    for state in states:
        cursor = cursors[state.name]
        state.uidvalidity, state.uidnext = cursor["uidvalidity"], cursor["uidnext"]
        state.highestmodseq, state.last_seen_uid = cursor["highestmodseq"], cursor["uidnext"] - 1
        state.v3_synced_at = now
    FolderState.objects.bulk_update(
        states, ["uidvalidity", "uidnext", "highestmodseq", "last_seen_uid", "v3_synced_at"], batch_size=500)


def _sync_folder(connection: Session, account: MailAccount, state: FolderState, cursor: dict) -> int:
    whole_folder = _whole_folder(state, cursor)
    last_seen = 0 if whole_folder else (state.last_seen_uid or 0)
    client = connection.client
    client.select_folder(state.name, readonly=True)
    # "n:*" always matches the newest message even if its UID is below n.
    uids = [uid for uid in client.search(["UID", f"{last_seen + 1}:*"]) if uid > last_seen]
    skipped, added = [], 0
    for batch in connection.fetch_batches(state.name, uids, skipped=skipped):
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
