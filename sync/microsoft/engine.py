"""The V3 Microsoft Graph engine: every folder, every run, per-folder delta sync with immutable ids.

Tokens come from the account's MSAL cache (refreshed silently, the new cache
saved); a refresh token that Microsoft no longer accepts puts the account
into "Neu verbinden" instead of failing quietly on every run.

Each run walks the whole mail folder tree (sync.microsoft.graph.folder_tree)
and reconciles the FolderState rows by the folder's id, which Graph keeps
across rename and move: a renamed or moved folder keeps its row and delta
link, a new folder gets a new row, a folder gone from the tree loses its row.
A folder's first V3 run (v3_synced_at is None: after the handoff, or a new
folder) is a delta round from the folder id without a filter, which
enumerates every message in it whatever its date; later runs follow the
delta link. An expired delta link starts a new whole-folder round. The one
message identity (sync.identity) keeps all of this exact: what V2, another
folder or an earlier round stored is not stored again.

A round resumes where it stopped: after each page's messages are stored, the
page's @odata.nextLink is saved as the folder's delta_link (a whole-folder
round's with the prefix WALK), so a big folder whose round is throttled or
cut off near its end finishes over several runs instead of starting over.
The delta link replaces it when the round ends. A row not read whole yet
follows only its own round's WALK link (never the handoff's delta link);
a next link Graph has forgotten starts the round again.
"""

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from portal.logsafe import describe
from sync.microsoft import client, subscriptions
from sync.microsoft.client import MicrosoftError
from sync.microsoft.graph import DeltaExpired, FolderTree, Graph, GraphNotFound, GraphUnauthorized
from sync import crypto
from sync.identity import FetchedMessage
from sync.models import AccountStatus, FolderState, MailAccount, SyncedMessage
from sync.services import (
    mark_reconnect, microsoft_tokens_of, record_skipped, record_sync_result, save_microsoft_cache, store_messages,
)

logger = logging.getLogger(__name__)
NAME_MAX_LENGTH = 500  # FolderState.name
# Rows that swap names pass through "~renaming~<pk>": the unique (account, name) constraint is checked per statement.
RENAMING = "~renaming~"
# delta_link of a whole-folder round in progress: WALK + the @odata.nextLink of its next page.
WALK = "walk:"


def sync(account: MailAccount) -> int:
    """One run over every syncable folder; returns the number of new messages.

    Errors end the run and are recorded on the account (record_sync_result
    with a MicrosoftError code, or "Neu verbinden" for a refused grant);
    folders finished before keep their delta links. One message that cannot
    be read is recorded (record_skipped) and the rest of its folder syncs.
    """
    if account.status in (AccountStatus.STOPPED, AccountStatus.RECONNECT):
        return 0
    try:
        tokens = {**microsoft_tokens_of(account), "stored": account.token_cache_encrypted}
    except crypto.SecretUnreadable:
        record_sync_result(account_id=account.pk, error_code="secret_unreadable")
        return 0
    added = 0
    try:
        # A 401 from Graph although MSAL thought the token valid: refresh once and go on.
        for force_refresh in (False, True):
            graph = Graph(_access_token(account, tokens, force_refresh=force_refresh),
                          mailbox=tokens.get("home_account_id") or account.address)
            try:
                for state in reconcile_folders(account, graph.folder_tree()):
                    added += _sync_folder(graph, account, state)
                break
            except GraphUnauthorized:
                if force_refresh:
                    raise
            finally:
                graph.close()
    except MicrosoftError as error:
        return added + _failed(account, error, expected=tokens["stored"])
    record_sync_result(account_id=account.pk)
    _ensure_subscription(account)
    return added


def _ensure_subscription(account: MailAccount) -> None:
    """Push for this account from now on (after the handoff or a re-connect the first run ends here).
    A failure is recorded on the subscription's row by subscriptions itself; what it did not expect
    is logged, and never turns a sync that went well into a failed one."""
    try:
        subscriptions.ensure(account)
    except Exception as error:  # noqa: BLE001 - logged with the account id; the poll goes on at the normal interval
        logger.error("Graph subscription of account %s failed unexpectedly (ms_subscription_internal, %s)", account.pk,
                     describe(error))


def _access_token(account: MailAccount, tokens: dict, *, force_refresh: bool) -> str:
    token, refreshed = client.access_token(tokens.get("cache", ""), home_account_id=tokens.get("home_account_id", ""),
                                           force_refresh=force_refresh)
    if refreshed:
        tokens["cache"] = refreshed
        stored = save_microsoft_cache(account_id=account.pk, cache=refreshed, home_account_id=tokens["home_account_id"],
                                      expected=tokens["stored"])
        tokens["stored"] = stored or tokens["stored"]
    return token


def _failed(account: MailAccount, error: MicrosoftError, *, expected: str) -> int:
    if error.code == "ms_reconnect":
        mark_reconnect(account_id=account.pk, expected=expected)
    else:
        record_sync_result(account_id=account.pk, error_code=error.code)
    return 0


def reconcile_folders(account: MailAccount, tree: FolderTree) -> list[FolderState]:
    """Bring the account's FolderState rows in line with Graph's folder tree; return the rows to sync.

    Rows are matched by graph_folder_id: a renamed or moved folder keeps its
    row (name = its new path). A listed folder without a row takes over a row
    without a Graph id that has its path (V2's "INBOX" row), else gets a new
    row (v3_synced_at None: read whole). Rows of folders gone from the tree
    are deleted, but only when the walk was complete. Two folders with one
    path (a "/" in a display name) get the id's end appended to the second.
    """
    with transaction.atomic():
        rows = list(FolderState.objects.select_for_update().filter(account=account))
        by_id = {row.graph_folder_id: row for row in rows if row.graph_folder_id}
        loose = {row.name: row for row in rows if not row.graph_folder_id}
        listed = {folder.id for folder in tree.folders}
        if tree.complete:
            gone = [folder_id for folder_id in by_id if folder_id not in listed]
            FolderState.objects.filter(pk__in=[by_id.pop(folder_id).pk for folder_id in gone]).delete()
        adopted = {}
        for folder in tree.folders:
            if folder.id not in by_id and folder.path[:NAME_MAX_LENGTH] in loose:
                adopted[folder.id] = loose.pop(folder.path[:NAME_MAX_LENGTH])
        # Names that stay: rows without a Graph id, and rows of folders a cut-short walk did not reach.
        taken = set(loose) | {row.name for folder_id, row in by_id.items() if folder_id not in listed}
        names = {}
        for folder in tree.folders:
            name = folder.path[:NAME_MAX_LENGTH]
            if name in taken:
                name = f"{folder.path[:NAME_MAX_LENGTH - 12]} ({folder.id[-8:]})"
            taken.add(name)
            names[folder.id] = name
        # Renames in two steps: folders may swap names within one run.
        moving = [row for folder_id, row in by_id.items() if folder_id in listed and row.name != names[folder_id]]
        for row in moving:
            FolderState.objects.filter(pk=row.pk).update(name=f"{RENAMING}{row.pk}")
        for row in moving:
            row.name = names[row.graph_folder_id]
            FolderState.objects.filter(pk=row.pk).update(name=row.name)
        result = []
        for folder in tree.folders:
            row = by_id.get(folder.id) or adopted.get(folder.id)
            if row is None:
                row = FolderState.objects.create(account=account, name=names[folder.id], graph_folder_id=folder.id)
            elif not row.graph_folder_id:
                # V2's row of that folder: its history stays, V3 reads the folder whole once.
                row.graph_folder_id, row.name, row.delta_link, row.v3_synced_at = folder.id, names[folder.id], "", None
                row.save(update_fields=["graph_folder_id", "name", "delta_link", "v3_synced_at"])
            result.append(row)
    return result


def _sync_folder(graph: Graph, account: MailAccount, state: FolderState) -> int:
    """One delta round of one folder: from its delta link, or over the whole folder on its first run.

    v3_since set: the row comes from the date-window version of this engine,
    whose delta link may carry a receivedDateTime filter (and so miss mail
    moved in with an old date); such a folder is read whole once too. A
    whole-folder round an earlier run cut short goes on from its WALK link.
    """
    link = state.delta_link or ""
    whole = state.v3_synced_at is None or state.v3_since is not None or not link or link.startswith(WALK)
    resume = link[len(WALK):] if link.startswith(WALK) else ("" if whole else link)
    if resume:
        try:
            return _delta_round(graph, account, state, resume, whole=whole)
        except (DeltaExpired, GraphNotFound):
            # Graph forgot the link's sync state: a new round over the whole folder (not a
            # date window, which would miss mail moved in meanwhile); identity dedup keeps it exact.
            pass
    for _ in range(2):
        try:
            return _delta_round(graph, account, state, state.graph_folder_id, whole=True)
        except GraphNotFound:
            return 0  # deleted after the listing: the next run's listing drops its row
        except DeltaExpired:
            continue  # a long round's page link can expire too (its sync state was replaced): start over once
    raise MicrosoftError("ms_protocol", permanent=False)  # Graph keeps forgetting this folder's state


def _delta_round(graph: Graph, account: MailAccount, state: FolderState, start: str, *, whole: bool) -> int:
    """Store a delta round page by page; after each page keep where the round goes on (its next link),
    and the new delta link once the round ended. whole: a round over the whole folder (saved as WALK)."""
    added = 0
    for page in graph.delta_pages(start):
        added += store_messages(account=account, folder=state.name,
                                messages=_messages_of(graph, account, state, page.items), engine="v3")
        if page.delta_link:
            FolderState.objects.filter(pk=state.pk).update(delta_link=page.delta_link, v3_synced_at=timezone.now(),
                                                           v3_since=None)
        elif page.next_link:
            FolderState.objects.filter(pk=state.pk).update(
                delta_link=f"{WALK}{page.next_link}" if whole else page.next_link)
    return added


def _messages_of(graph: Graph, account: MailAccount, state: FolderState, items: list[dict]) -> list[FetchedMessage]:
    """The page's messages that the account does not hold yet, with every field the identity needs.

    "@removed" entries (deleted, moved out) are left out. An entry whose
    immutable id is stored already is the same message (a flag change, an
    edit, a move between folders) and is left out too. An entry without the
    identity's fields (Graph sends only the id and the changed flags, e.g.
    {"id": ..., "isRead": true}) is fetched whole by its id. One that is gone
    or still cannot be read is recorded (record_skipped); the page goes on.
    """
    live = [item for item in items if "@removed" not in item]
    ids = [str(item.get("id") or "") for item in live]
    known = set(SyncedMessage.objects.filter(account=account, provider_id__in=[i for i in ids if i])
                .values_list("provider_id", flat=True))
    messages = []
    for item, item_id in zip(live, ids):
        if item_id in known:
            continue
        if not item_id:
            record_skipped(account_id=account.pk, folder=state.name, reference="-", reason="unreadable",
                           detail="no id")
            continue
        if not _complete(item):
            try:
                item = graph.message(item_id)
            except GraphNotFound:
                # Deleted between the delta page and this request.
                record_skipped(account_id=account.pk, folder=state.name, reference=item_id, reason="gone",
                               detail="GraphNotFound")
                continue
            if not isinstance(item, dict) or not _complete(item):
                record_skipped(account_id=account.pk, folder=state.name, reference=item_id, reason="unreadable",
                               detail="no sentDateTime or receivedDateTime")
                continue
        try:
            messages.append(message_of(item))
        except (AttributeError, TypeError, ValueError) as error:  # a field of an unexpected shape
            record_skipped(account_id=account.pk, folder=state.name, reference=item_id, reason="unreadable",
                           detail=type(error).__name__)
        known.add(item_id)
    return messages


def _complete(item: dict) -> bool:
    """Whether an entry carries what the identity needs: every stored message has a readable date."""
    return bool(_parse_time(item.get("sentDateTime")) or _parse_time(item.get("receivedDateTime")))


def _mailbox(value) -> str:
    """A Graph emailAddress ({"name", "address"}) as the header shows it: "Name <address>".

    Not email.utils.formataddr: it RFC 2047-encodes non-ASCII names ("=?utf-8?b?...?="), while the
    IMAP engines store decoded text. Exchange repeats the address as the name when a header has
    none; then it is just the address, as the header was.
    """
    value = value if isinstance(value, dict) else {}
    name, address = str(value.get("name") or "").strip(), str(value.get("address") or "").strip()
    if not name or name.lower() == address.lower():
        return address
    if not address:
        return name
    if any(char in name for char in '",:;<>@()[]\\'):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def _addresses(recipients) -> str:
    """Graph recipients ([{"emailAddress": {"name", "address"}}]) as one header-style text."""
    return ", ".join(_mailbox(r.get("emailAddress")) for r in recipients or [] if isinstance(r, dict))


def message_of(item: dict) -> FetchedMessage:
    """A Graph message resource as a FetchedMessage (identity by sync.identity's rule).

    sentDateTime is the Date header as Exchange stored it (UTC): the
    fingerprint's date, as IMAP reads the header; receivedDateTime the
    delivery time. provider_id is the immutable id (Prefer: IdType="ImmutableId").
    Errors: AttributeError/TypeError for fields of an unexpected shape.
    """
    return FetchedMessage(
        message_id=str(item.get("internetMessageId") or "")[:998], subject=str(item.get("subject") or "")[:500],
        sender=_mailbox((item.get("from") or {}).get("emailAddress"))[:500],
        to=_addresses(item.get("toRecipients"))[:2000], cc=_addresses(item.get("ccRecipients"))[:2000],
        sent_at=_parse_time(item.get("sentDateTime")), received_at=_parse_time(item.get("receivedDateTime")),
        size=0, provider_id=str(item.get("id") or "")[:512],
    )


def _parse_time(raw) -> datetime | None:
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if raw else None
    except ValueError:
        return None
