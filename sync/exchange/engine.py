"""The V3 EWS engine (Exchange on-premises): every mail folder, every run, from SyncFolderItems states.

Each run lists the mail folders (sync.exchange.folders) and reconciles the
account's FolderState rows by FolderId: a new folder gets a row and is read
from its first message, a renamed or moved one keeps its row and state (only
its name changes), a deleted one loses its row. A folder's first V3 run
(v3_synced_at is None: after the handoff, or a new folder) walks the whole
folder from an empty SyncFolderItems state: whatever its date, a message that
is in the folder and not in the CRM is imported once, and what V2 or another
folder stored already is recognised by its identity (sync.identity). Later
runs continue from the stored state. The state is saved after each page's
messages are stored, so a crash re-reads at most one page and dedup absorbs it.

That whole-folder walk resumes where it stopped: while it runs, each page's
state is saved with the prefix WALK, and a run that finds the folder not yet
synced whole continues from such a state (a walk of a big folder that is
throttled or cut off near its end finishes over several runs instead of
starting over each time). Any other state on a row not synced whole (the
handoff's, recorded by the migration's verify; an earlier engine's) is not
this walk's progress: the walk starts empty. The prefix goes when the walk ends.
"""

import logging

from django.db import transaction
from django.utils import timezone
from exchangelib.errors import ErrorFolderNotFound, ErrorItemNotFound

from sync.errors import MailboxError
from sync.exchange import client as ews
from sync.exchange.folders import MailFolder
from sync.models import FolderState, MailAccount
from sync.services import password_of, record_skipped, record_sync_result, record_v3_failure, store_messages

logger = logging.getLogger(__name__)
# The ews_sync_state of a whole-folder walk in progress starts with this (EWS states are Base64: never a ":").
WALK = "walk:"


def sync(account: MailAccount) -> int:
    """One run over all mail folders; returns the number of new messages.

    Errors: a refused login, an unreachable server or an EWS error is recorded
    on the account (record_v3_failure) and ends the run; folders finished
    before it keep their new states, so nothing is fetched twice.
    """
    added = 0
    try:
        with ews.mailbox_errors(), ews.open_account(ews.settings_of(account), password_of(account)) as client:
            folders = ews.mail_folders(client)
            for folder, state in reconcile_folders(account, folders):
                added += _sync_folder(client, account, folder, state)
    except MailboxError as error:
        record_v3_failure(account_id=account.pk, error_code=ews.error_code(error.code))
        return added
    record_sync_result(account_id=account.pk)
    return added


def reconcile_folders(account: MailAccount, folders: list[MailFolder]) -> list[tuple[MailFolder, FolderState]]:
    """Bring the account's FolderState rows in line with the mailbox's folders; return (folder, row) to sync.

    A folder finds its row by FolderId; else it takes over a row of the same
    name that has no FolderId yet (V2's "INBOX" with its high-water mark, the
    handoff's or an earlier engine's "INBOX"/"Sent"); else it gets a new row.
    A row taken over by name is read whole once (v3_synced_at = None): the
    earlier engine read only a date window after its handoff, so mail that
    was in the folder with an older date may be missing; dedup keeps the rest.
    Rows whose FolderId is gone are deleted; rows without one that no folder
    took (V2 history) are kept unless a renamed folder needs their name.
    """
    with transaction.atomic():
        rows = list(FolderState.objects.select_for_update().filter(account=account))
        by_id = {row.ews_folder_id: row for row in rows if row.ews_folder_id}
        unbound = {row.name: row for row in rows if not row.ews_folder_id}
        pairs = []
        for folder in folders:
            row = by_id.pop(folder.id, None) or unbound.pop(folder.name, None)
            pairs.append((folder, row))
        # Gone from the mailbox (deleted, or moved below trash): their rows go. Leftover
        # rows of the earlier engines that still carry a sync state have no folder either.
        doomed = [row.pk for row in by_id.values()]
        doomed += [row.pk for name, row in unbound.items() if row.ews_sync_state or name in {f.name for f in folders}]
        FolderState.objects.filter(pk__in=doomed).delete()
        # Renames in two steps, so that two folders swapping names never meet the unique (account, name).
        renamed = [(folder, row) for folder, row in pairs if row is not None and row.name != folder.name]
        for _folder, row in renamed:
            FolderState.objects.filter(pk=row.pk).update(name=f"(renaming {row.pk})")
        result = []
        for folder, row in pairs:
            if row is None:
                row = FolderState.objects.create(account=account, name=folder.name, ews_folder_id=folder.id)
            elif not row.ews_folder_id:
                row.name, row.ews_folder_id, row.v3_synced_at = folder.name, folder.id, None
                FolderState.objects.filter(pk=row.pk).update(name=row.name, ews_folder_id=row.ews_folder_id,
                                                             v3_synced_at=None)
            elif row.name != folder.name:
                row.name = folder.name
                FolderState.objects.filter(pk=row.pk).update(name=row.name)
            result.append((folder, row))
    return result


def _sync_folder(client, account: MailAccount, folder: MailFolder, state: FolderState) -> int:
    whole_folder = state.v3_synced_at is None
    start = state.ews_sync_state or ""
    if start.startswith(WALK):
        start = start[len(WALK):]  # this folder's walk, cut short by an earlier run: go on from there
    elif whole_folder:
        start = ""  # a state from elsewhere (the handoff's, an earlier engine's): the walk starts empty
    added, reached = 0, None
    try:
        for page in ews.folder_changes(client, folder.id, start):
            skipped = []
            messages = ews.fetch_messages(client, page.created, skipped=skipped)
            added += store_messages(account=account, folder=state.name, messages=messages, engine="v3")
            for item_id, reason, detail in skipped:
                record_skipped(account_id=account.pk, folder=state.name, reference=item_id, reason=reason,
                               detail=detail)
            # Saved only after the page's messages are stored: a crash in between re-reads the page.
            reached = page.sync_state
            FolderState.objects.filter(pk=state.pk).update(
                ews_sync_state=f"{WALK}{reached}" if whole_folder else reached)
    except (ErrorFolderNotFound, ErrorItemNotFound):
        # Deleted between the folder list and its sync: the next run drops its row.
        logger.info("EWS folder of account %s vanished during the run", account.pk)
        return added
    done = {"v3_synced_at": timezone.now()}
    if reached is not None:
        done["ews_sync_state"] = reached
    FolderState.objects.filter(pk=state.pk).update(**done)
    return added
