"""Which Exchange folders hold mail the CRM wants, found anew on every run (EWS).

Every mail folder below the message folder root ("Top of Information Store",
distinguished id ``msgfolderroot``) is synced, at any depth: one FindFolder with
``Traversal="Deep"`` (paged) lists them with their DisplayName, FolderClass and
ParentFolderId. Mail folders are those whose FolderClass is ``IPF.Note``, a
subclass of it (``IPF.Note.*``: e.g. ``IPF.Note.OutlookHomepage``, which Outlook
gives a folder that has a home page), ``IPF.Imap`` (folders of an Outlook IMAP
profile, imported from its PST) or empty (folders some clients create without
one); calendars, contacts, tasks, notes and journal have other classes
(``IPF.Appointment``, ``IPF.Contact``, ``IPF.Task``, ``IPF.StickyNote``,
``IPF.Journal``, and their subclasses). The RSS Feeds folder has no
distinguished id and the class ``IPF.Note.OutlookHomepage``; it holds feed
posts, not mail: a folder of that class directly below msgfolderroot whose
name holds "RSS" (every localisation does: "RSS Feeds", "RSS-Feeds", "Flux
RSS", ...) is skipped with its feeds below it. Trash, junk, drafts, outbox,
sync issues, conversation history and search folders are recognised by their
distinguished ids (one GetFolder), not by name, so a localised mailbox
("Gelöschte Elemente") or a renamed folder is still skipped, with everything
below it.

A folder is known by its FolderId, which Exchange keeps when a folder is
renamed or moved, so its FolderState row and SyncFolderItems state survive
both. Its name is the path of display names below msgfolderroot ("Inbox/Projekte"),
except that the inbox is called "INBOX" and the sent items "Sent", the names
V2 and the first V3 engine gave them: their rows and V2's history stay attached.

Sources: Microsoft, "FindFolder operation", "GetFolder operation",
"DistinguishedFolderId", "FolderClass" (EWS reference for Exchange).
"""

import hashlib
from dataclasses import dataclass

from exchangelib.errors import EWSError
from exchangelib.fields import FieldPath
from exchangelib.folders import Folder, Root
from exchangelib.folders.known_folders import (
    ConversationHistory, DeletedItems, Drafts, Inbox, JunkEmail, MsgFolderRoot, Outbox, SearchFolders, SentItems,
    SyncIssues,
)
from exchangelib.folders.queryset import DEEP
from exchangelib.items import ID_ONLY
from exchangelib.properties import DistinguishedFolderId, Mailbox
from exchangelib.services import FindFolder, GetFolder

# Distinguished folders whose mail (and whose sub-folders' mail) is not the CRM's business.
SKIPPED = (DeletedItems, JunkEmail, Drafts, Outbox, SyncIssues, ConversationHistory, SearchFolders)
# Fixed row names for these distinguished folders (see the module docstring).
FIXED_NAMES = {"inbox": "INBOX", "sentitems": "Sent"}
# FolderClass values (case-folded) of folders that hold mail; "ipf.note." + anything is mail too.
MAIL_CLASSES = {"ipf.note", "ipf.imap", ""}
MAIL_SUBCLASS_OF = "ipf.note."
RSS_FEEDS_CLASS = "ipf.note.outlookhomepage"
SEPARATOR = "/"
FOLDER_PAGE = 500  # folders per FindFolder page
MAX_NAME = 500  # FolderState.name


@dataclass(frozen=True)
class MailFolder:
    """One folder to sync: ``id`` the EWS FolderId, ``name`` its path, ``distinguished`` e.g. "inbox" or ""."""

    id: str
    name: str
    distinguished: str = ""


def mail_folders(account) -> list[MailFolder]:
    """The mailbox's mail folders to sync, INBOX first, then by name. Two EWS calls (plus FindFolder paging).

    Raises what exchangelib raises (the caller wraps it in client.mailbox_errors).
    """
    root = Root(account=account)  # the parent object exchangelib wants; no request is made for it
    distinguished = _distinguished_ids(account, root, (Inbox, SentItems, MsgFolderRoot, *SKIPPED))
    root_id = distinguished.pop(MsgFolderRoot.DISTINGUISHED_FOLDER_ID, None)
    skipped = {folder_id for name, folder_id in distinguished.items() if name not in ("inbox", "sentitems")}
    names_of = {folder_id: name for name, folder_id in distinguished.items()}
    found = {}
    for folder in FindFolder(account=account, page_size=FOLDER_PAGE).call(
        folders=[_distinguished_folder(MsgFolderRoot, root)], shape=ID_ONLY, depth=DEEP, restriction=None,
        additional_fields={FieldPath(field=Folder.get_field_by_fieldname(name))
                           for name in ("name", "folder_class", "parent_folder_id", "child_folder_count")},
        max_items=None, offset=0,
    ):
        if isinstance(folder, Exception):
            raise folder
        found[folder.id] = folder
    result, taken = [], set()
    skipped |= {folder_id for folder_id, folder in found.items() if _is_rss_feeds(folder, root_id, found)}
    for folder_id, folder in found.items():
        chain = _ancestry(folder, found)
        if skipped.intersection(chain) or not is_mail_class(folder.folder_class):
            continue
        parts = [FIXED_NAMES.get(names_of.get(part, ""), found[part].name or part) for part in reversed(chain)]
        name = _unique(SEPARATOR.join(parts), folder_id, taken)
        taken.add(name)
        result.append(MailFolder(id=folder_id, name=name, distinguished=names_of.get(folder_id, "")))
    return sorted(result, key=lambda folder: (folder.distinguished != "inbox", folder.name))


def is_mail_class(folder_class: str | None) -> bool:
    """Whether a folder of this FolderClass holds mail: IPF.Note, IPF.Note.*, IPF.Imap or none."""
    value = (folder_class or "").strip().casefold()
    return value in MAIL_CLASSES or value.startswith(MAIL_SUBCLASS_OF)


def _is_rss_feeds(folder, root_id: str | None, found: dict) -> bool:
    """Outlook's RSS Feeds folder (see the module docstring): feed posts, not mail."""
    parent = folder.parent_folder_id.id if folder.parent_folder_id else None
    top_level = parent == root_id if root_id else parent not in found
    return ((folder.folder_class or "").strip().casefold() == RSS_FEEDS_CLASS and top_level
            and "rss" in (folder.name or "").casefold())


def _distinguished_folder(folder_cls, root):
    return folder_cls(root=root, _distinguished_id=DistinguishedFolderId(
        id=folder_cls.DISTINGUISHED_FOLDER_ID, mailbox=Mailbox(email_address=root.account.primary_smtp_address),
    ))


def _distinguished_ids(account, root, classes) -> dict[str, str]:
    """{distinguished id: FolderId} for those the mailbox has (older servers lack some, e.g. conversationhistory)."""
    wanted = [cls for cls in classes if cls.supports_version(account.version)]
    ids = {}
    answers = GetFolder(account=account).call(
        folders=[_distinguished_folder(cls, root) for cls in wanted], additional_fields=set(), shape=ID_ONLY,
    )
    for cls, answer in zip(wanted, answers):
        # Per-folder errors (ErrorFolderNotFound, ErrorAccessDenied, ...) come back as values: no such folder here.
        if not isinstance(answer, EWSError) and answer.id:
            ids[cls.DISTINGUISHED_FOLDER_ID] = answer.id
    return ids


def _ancestry(folder, found: dict) -> list[str]:
    """The folder's id and its ancestors' ids up to (without) msgfolderroot, nearest first."""
    chain = [folder.id]
    parent = folder.parent_folder_id.id if folder.parent_folder_id else None
    while parent in found and parent not in chain:  # "not in chain": never loop on a corrupt hierarchy
        chain.append(parent)
        folder = found[parent]
        parent = folder.parent_folder_id.id if folder.parent_folder_id else None
    return chain


def _unique(name: str, folder_id: str, taken: set[str]) -> str:
    # Two folders can end up with one path ("a/b" as one display name beside "a" with a child "b");
    # a suffix from the FolderId keeps each row its own, the same on every run.
    if len(name) <= MAX_NAME and name not in taken:
        return name
    suffix = f" ({hashlib.sha256(folder_id.encode()).hexdigest()[:8]})"
    return name[: MAX_NAME - len(suffix)] + suffix
