"""A fake Exchange Web Services endpoint for exchangelib, over HTTPS on 127.0.0.1.

It speaks just enough SOAP for sync.exchange.client and sync.exchange.push (pull notifications:
Subscribe, GetEvents, Unsubscribe, in tests.fakes.ews_notify): GetFolder (distinguished ids and
FolderIds; ErrorFolderNotFound for a folder the mailbox lacks), FindFolder (Deep or
Shallow, paged with IndexedPageFolderView), SyncFolderItems (paging with
IncludesLastItemInRange, opaque per-folder sync states, Create and Delete changes,
ErrorInvalidSyncStateData for a state it did not issue or has invalidated),
FindItem (a DateTimeReceived >= restriction, paged), GetItem (per-item errors such as
ErrorItemNotFound) and a 401 for a wrong password (Basic auth). Every answer carries a
ServerVersionInfo header.

The mailbox looks like a fresh English Exchange 2016 mailbox: below msgfolderroot
("Top of Information Store") Inbox, Sent Items, Deleted Items, Junk Email, Drafts,
Outbox, Sync Issues (with Conflicts, Local Failures, Server Failures), Conversation
History (all FolderClass IPF.Note, each with its distinguished id), Calendar,
Contacts, Tasks, Notes, Journal and RSS Feeds (other folder classes); Finder (the
search folders) sits beside msgfolderroot below the root, as in Exchange. Folders
keep their FolderId when renamed or moved; a moved item gets a new ItemId.

    ews = FakeEWS(username="CORP\\\\anna", password="pw").start()
    ews.deliver("inbox", subject="Hallo", received=datetime(...))
    ews.add_folder("projekte", "Projekte", parent="inbox"); ews.rename_folder("projekte", "Kunden")
    ews.url  -> "https://localhost:PORT/EWS/Exchange.asmx"; ews.cert_pem is its CA
"""

import base64
import itertools
import ssl
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from portal.devservers import make_certificate
from tests.fakes.ews_http import handler
from tests.fakes.ews_notify import Notifications
from tests.fakes.ews_xml import M, T, _content, _error, _message  # tests import M and _error from here
from tests.fakes.local_server import listen, serve_in_background, shut



# (key, DisplayName, parent key, FolderClass) of a fresh English mailbox; "root" is the top of the hierarchy.
DEFAULT_FOLDERS = (
    ("root", "", "", ""),
    ("msgfolderroot", "Top of Information Store", "root", ""),
    ("searchfolders", "Finder", "root", ""),
    ("inbox", "Inbox", "msgfolderroot", "IPF.Note"),
    ("sentitems", "Sent Items", "msgfolderroot", "IPF.Note"),
    ("deleteditems", "Deleted Items", "msgfolderroot", "IPF.Note"),
    ("junkemail", "Junk Email", "msgfolderroot", "IPF.Note"),
    ("drafts", "Drafts", "msgfolderroot", "IPF.Note"),
    ("outbox", "Outbox", "msgfolderroot", "IPF.Note"),
    ("syncissues", "Sync Issues", "msgfolderroot", "IPF.Note"),
    ("conflicts", "Conflicts", "syncissues", "IPF.Note"),
    ("localfailures", "Local Failures", "syncissues", "IPF.Note"),
    ("serverfailures", "Server Failures", "syncissues", "IPF.Note"),
    ("conversationhistory", "Conversation History", "msgfolderroot", "IPF.Note"),
    ("calendar", "Calendar", "msgfolderroot", "IPF.Appointment"),
    ("contacts", "Contacts", "msgfolderroot", "IPF.Contact"),
    ("tasks", "Tasks", "msgfolderroot", "IPF.Task"),
    ("notes", "Notes", "msgfolderroot", "IPF.StickyNote"),
    ("journal", "Journal", "msgfolderroot", "IPF.Journal"),
    ("rssfeeds", "RSS Feeds", "msgfolderroot", "IPF.Note.OutlookHomepage"),
)
DISTINGUISHED = {key for key, *_rest in DEFAULT_FOLDERS} - {"rssfeeds"}
# The element Exchange answers with per FolderClass (FindFolder, GetFolder).
FOLDER_TAGS = {"IPF.Appointment": "CalendarFolder", "IPF.Contact": "ContactsFolder", "IPF.Task": "TasksFolder"}


class FakeEWS:
    def __init__(self, *, username: str, password: str, page_size: int | None = None, auth: str = "basic"):
        self.username, self.password = username, password
        # "basic", or "ntlm": a real NTLMv2 handshake per connection (pyspnego as the acceptor),
        # announced as "Negotiate, NTLM" like IIS does.
        self.auth = auth
        self.page_size = page_size  # None: the client's MaxChangesReturned
        self.folder_page_size: int | None = None  # FindFolder; None: the client's MaxEntriesReturned
        # folder key (a distinguished id such as "inbox", or the test's own name) -> its items
        self.folders: dict[str, list[dict]] = {}
        # folder key -> {"id", "parent" (a key), "name" (DisplayName), "folder_class", "distinguished"}
        self.hierarchy: dict[str, dict] = {}
        # folder key -> [(sequence number of the deletion, ItemId)] for SyncFolderItems' Delete changes
        self.removed: dict[str, list[tuple[int, str]]] = {}
        self.calls: list[str] = []
        # operation -> EWS ResponseCode to answer with instead ("GetFolder": "ErrorMailboxStoreUnavailable")
        self.failures: dict[str, str] = {}
        self.epoch = 1  # sync states of another epoch are invalid
        # Throttling (Microsoft, "EWS throttling in Exchange" and "ErrorServerBusy"/"BackOffMilliseconds" in the
        # EWS ResponseCode reference): every busy_every-th request is answered ErrorServerBusy with
        # BackOffMilliseconds = busy_back_off_ms, as a SOAP fault in an HTTP 500 (busy_form "fault", what
        # Exchange usually sends) or as an error response message in an HTTP 200 (busy_form "response", with
        # no SyncState in SyncFolderItems' answer). 0: never.
        self.busy_every, self.busy_form, self.busy_back_off_ms = 0, "fault", 10
        # Exchange also answers 401 to a correct sign-in while it throttles (exchangelib's protocol.py:
        # "EWS sometimes throws 401's when it wants us to throttle connections"): every
        # unauthorized_every-th request is refused whatever its credentials (Basic only). 0: never.
        self.unauthorized_every = 0
        self.requests = 0
        # ErrorInvalidSyncStateData's answer: "with_state" carries an empty SyncState and
        # IncludesLastItemInRange (Exchange 2016), "bare" leaves them out (Microsoft's
        # SyncFolderItemsResponseMessage reference: both are optional children; error answers of other
        # builds omit them, which made exchangelib raise AttributeError).
        self.invalid_state_answer = "with_state"
        # A login that may not open this mailbox: every operation, after a successful sign-in, answers this
        # ResponseCode (Microsoft's EWS "ResponseCode" reference: ErrorAccessDenied, "the calling account does
        # not have the rights"; ErrorNonExistentMailbox, "the requested mailbox does not exist"). "": off.
        self.mailbox_refusal = ""
        # Extended Protection (NTLM only): the AUTHENTICATE message must carry this server's TLS channel
        # binding, else 401. Microsoft, "Configure Windows Extended Protection in Exchange Server": on by
        # default since Exchange Server 2019 CU14, with token checking "Require" on EWS. See ews_http.
        self.extended_protection = False
        # A compressed bomb (issue 10): this operation's answer ("*": every one) is a gzip body of about
        # bomb_bytes / 1000 that inflates to bomb_bytes. None: off.
        self.bomb: str | None = None
        self.bomb_bytes = 400 * 2**20
        # A body that never ends in time: the headers at once, then one byte every drip_seconds (0: off), for
        # drip_operation (None: every operation).
        self.drip_seconds, self.drip_operation = 0.0, None
        # What sits in front of Exchange when it is down: every request answered with this (status, body), e.g.
        # (502, b"<html>Bad Gateway</html>") from a load balancer, or (500, an IIS error page). None: off.
        self.http_error: tuple[int, bytes] | None = None
        # Every connection reset (TCP RST) right after the request arrived, as a failing server or firewall does.
        self.reset = False
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        # Pull notifications (tests.fakes.ews_notify): Subscribe, GetEvents, Unsubscribe; notify.enabled = False
        # makes a server that refuses subscriptions.
        self.notify = Notifications(self)
        for folder_key, name, parent, folder_class in DEFAULT_FOLDERS:
            self.add_folder(folder_key, name, parent=parent, folder_class=folder_class,
                            distinguished=folder_key in DISTINGUISHED)
        cert, key = _certificate()
        self.cert_pem = cert.read_text()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = listen(handler(self), context)
        self.port = self._server.server_address[1]
        self.url = f"https://localhost:{self.port}/EWS/Exchange.asmx"

    def start(self) -> "FakeEWS":
        serve_in_background(self._server)
        return self

    def stop(self) -> None:
        shut(self._server)

    def answer(self, operation: str, request) -> str:
        """The response messages for one operation (after sign-in and throttling, see ews_http)."""
        with self._lock:
            if self.mailbox_refusal:
                return _error(operation, self.mailbox_refusal, "Access is denied. Check credentials.")
            if operation in self.failures:
                return _error(operation, self.failures[operation], "Injected by the test.")
            if operation in OPERATIONS:
                return OPERATIONS[operation](self, request)
        # e.g. ConvertId, which exchangelib sends to learn the version from the header
        return _error(operation, "ErrorInvalidIdMalformed", "Id is malformed.")

    def ntlm_user_file(self, directory: Path) -> Path:
        """pyspnego's acceptor reads the accounts it knows from the file NTLM_USER_FILE names."""
        domain, _sep, user = self.username.rpartition("\\")
        path = directory / "ntlm-users"
        path.write_text(f"{domain}:{user}:{self.password}\n")
        return path

    def deliver(self, folder: str = "inbox", *, subject: str, message_id: str | None = None,
                received: datetime | None = None, sender: str = "kunde@example.org", size: int = 1234,
                sent: datetime | None = None, sender_name: str | None = None,
                to: tuple[tuple[str, str], ...] = (), cc: tuple[tuple[str, str], ...] = ()) -> dict:
        """Put a message into a folder (a key of self.folders).

        message_id: None makes one up, "" leaves InternetMessageId out (Exchange has none
        for a message without the header). sent: DateTimeSent (the Date header), by
        default the delivery time. sender_name: the From mailbox's Name; Exchange puts
        the address there when the header has no display name. to/cc: (name, address).
        Set item["get_error"] = "ErrorItemCorrupt" to make GetItem refuse this item, item["get_error_once"]
        for the next GetItem only (an ErrorServerBusy in one of a GetItem's answers, as "EWS throttling in
        Exchange" allows per response message).
        """
        received = received or datetime.now(timezone.utc)
        with self._lock:
            seq = next(self._seq)
            item = {"seq": seq, "id": f"AAMk{seq:08d}", "subject": subject, "sender": sender, "size": size,
                    "message_id": f"<m{seq}@example.org>" if message_id is None else message_id,
                    "received": received, "sent": received if sent is None else sent,
                    "sender_name": sender if sender_name is None else sender_name, "to": tuple(to), "cc": tuple(cc)}
            self.folders[folder].append(item)
            self.notify.event(folder, item)
        return item

    def move(self, item: dict, folder: str) -> dict:
        """Move an item to another folder, as Outlook does: a new ItemId there, the fields kept."""
        with self._lock:
            source = next(key for key, items in self.folders.items() if item in items)
            self.folders[source].remove(item)
            seq = next(self._seq)
            self.removed[source].append((seq, item["id"]))
            moved = {**item, "seq": seq, "id": f"AAMk{seq:08d}"}
            self.folders[folder].append(moved)
            self.notify.event(folder, moved, kinds=("MovedEvent",))
        return moved

    def add_folder(self, key: str, name: str, *, parent: str = "msgfolderroot", folder_class: str = "IPF.Note",
                   distinguished: bool = False) -> str:
        """A folder named `name` (DisplayName) below the folder `parent`; returns its key."""
        with self._lock:
            self.hierarchy[key] = {"id": f"AQMkF-{key}", "parent": parent, "name": name,
                                   "folder_class": folder_class, "distinguished": distinguished}
            self.folders.setdefault(key, [])
            self.removed.setdefault(key, [])
        return key

    def rename_folder(self, key: str, name: str, *, parent: str | None = None) -> None:
        """Rename (and with `parent`, move) a folder; it keeps its FolderId, items and sync states."""
        with self._lock:
            self.hierarchy[key]["name"] = name
            if parent is not None:
                self.hierarchy[key]["parent"] = parent

    def delete_folder(self, key: str) -> None:
        """Delete a folder with everything below it."""
        with self._lock:
            doomed = {key} | {child for child in self.hierarchy if key in self._ancestors(child)}
            for gone in doomed:
                del self.hierarchy[gone]
                del self.folders[gone]

    def folder_id(self, key: str) -> str:
        return self.hierarchy[key]["id"]

    def invalidate_sync_states(self) -> None:
        self.epoch += 1

    def _ancestors(self, key: str) -> list[str]:
        found = []
        while key in self.hierarchy:
            key = self.hierarchy[key]["parent"]
            found.append(key)
        return found

    def _key_of(self, ident) -> str | None:
        """The folder key a DistinguishedFolderId or FolderId element names; None if there is no such folder."""
        value = ident.get("Id")
        if ident.tag == f"{{{T}}}DistinguishedFolderId":
            return value if value in self.hierarchy and self.hierarchy[value]["distinguished"] else None
        return next((key for key, folder in self.hierarchy.items() if folder["id"] == value), None)

    def _folder_xml(self, key: str) -> str:
        folder = self.hierarchy[key]
        # Subclasses too: "IPF.Appointment.Birthday" is a CalendarFolder, "IPF.Contact.MOC.QuickContacts" contacts.
        tag = next((tag for folder_class, tag in FOLDER_TAGS.items()
                    if folder["folder_class"] == folder_class or folder["folder_class"].startswith(folder_class + ".")),
                   "Folder")
        parent = self.hierarchy.get(folder["parent"])
        parent_xml = f'<t:ParentFolderId Id={quoteattr(parent["id"])} ChangeKey="ck"/>' if parent else ""
        # Exchange leaves FolderClass out for folders created without one.
        folder_class = escape(folder["folder_class"])
        folder_class = f"<t:FolderClass>{folder_class}</t:FolderClass>" if folder_class else ""
        children = sum(1 for other in self.hierarchy.values() if other["parent"] == key)
        return (
            f'<t:{tag}><t:FolderId Id={quoteattr(folder["id"])} ChangeKey="ck"/>{parent_xml}{folder_class}'
            f"<t:DisplayName>{escape(folder['name'])}</t:DisplayName>"
            f"<t:TotalCount>{len(self.folders[key])}</t:TotalCount>"
            f"<t:ChildFolderCount>{children}</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount></t:{tag}>"
        )

    # --- operations ---------------------------------------------------------------------------------------------

    def get_folder(self, request) -> str:
        answers = []
        for ident in request.find(f"{{{M}}}FolderIds"):
            key = self._key_of(ident)
            answers.append(
                _error("GetFolder", "ErrorFolderNotFound", "The specified folder could not be found in the store.")
                if key is None else
                '<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
                f"<m:Folders>{self._folder_xml(key)}</m:Folders></m:GetFolderResponseMessage>"
            )
        return "".join(answers)

    def find_folder(self, request) -> str:
        """FindFolder below one parent: its children (Shallow) or all descendants (Deep), paged."""
        parent = self._key_of(request.find(f"{{{M}}}ParentFolderIds")[0])
        if parent is None:
            return _error("FindFolder", "ErrorFolderNotFound", "The specified folder could not be found in the store.")
        deep = request.get("Traversal") == "Deep"
        found = [key for key in self.hierarchy
                 if (parent in self._ancestors(key) if deep else self.hierarchy[key]["parent"] == parent)]
        view = request.find(f"{{{M}}}IndexedPageFolderView")
        offset = int(view.get("Offset", 0))
        limit = self.folder_page_size or int(view.get("MaxEntriesReturned", 100))
        page = found[offset : offset + limit]
        last = "true" if offset + len(page) >= len(found) else "false"
        return (
            '<m:FindFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
            f'<m:RootFolder IndexedPagingOffset="{offset + len(page)}" TotalItemsInView="{len(found)}" '
            f'IncludesLastItemInRange="{last}"><t:Folders>{"".join(self._folder_xml(key) for key in page)}'
            "</t:Folders></m:RootFolder></m:FindFolderResponseMessage>"
        )

    def sync_folder_items(self, request) -> str:
        name = self._key_of(request.find(f"{{{M}}}SyncFolderId")[0])
        if name is None:
            return _error("SyncFolderItems", "ErrorFolderNotFound",
                          "The specified folder could not be found in the store.")
        state = request.findtext(f"{{{M}}}SyncState") or ""
        seen = self._parse_state(state, name)
        if seen is None:
            # Exchange's own error answer carries an empty SyncState (exchangelib reads it first).
            extra = "<m:SyncState/><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange>"
            return _error("SyncFolderItems", "ErrorInvalidSyncStateData",
                          "Synchronization state data is corrupt or otherwise invalid.",
                          extra=extra if self.invalid_state_answer == "with_state" else "")
        limit = self.page_size or int(request.findtext(f"{{{M}}}MaxChangesReturned") or 100)
        # Creates of items added after the state, Deletes of items the state's holder had seen.
        pending = sorted(
            [(item["seq"], f"<t:Create>{_message(item)}</t:Create>") for item in self.folders[name]
             if item["seq"] > seen]
            + [(seq, f'<t:Delete><t:ItemId Id={quoteattr(item_id)} ChangeKey="ck"/></t:Delete>')
               for seq, item_id in self.removed[name] if seq > seen and int(item_id[4:]) <= seen]
        )
        page = pending[:limit]
        new_seen = page[-1][0] if page else seen
        changes = "".join(change for _seq, change in page)
        last = "true" if len(pending) <= limit else "false"
        return (
            '<m:SyncFolderItemsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
            f"<m:SyncState>{self._state(new_seen, name)}</m:SyncState>"
            f"<m:IncludesLastItemInRange>{last}</m:IncludesLastItemInRange><m:Changes>{changes}</m:Changes>"
            "</m:SyncFolderItemsResponseMessage>"
        )

    def find_item(self, request) -> str:
        name = self._key_of(request.find(f"{{{M}}}ParentFolderIds")[0])
        items = sorted(self.folders[name], key=lambda item: item["received"], reverse=True)
        for condition in request.iter(f"{{{T}}}IsGreaterThanOrEqualTo"):
            field = condition.find(f"{{{T}}}FieldURI").get("FieldURI")
            value = condition.find(f".//{{{T}}}Constant").get("Value")
            assert field == "item:DateTimeReceived", field  # the only restriction sync.exchange.client sends
            since = datetime.fromisoformat(value.replace("Z", "+00:00"))
            items = [item for item in items if item["received"] >= since]
        for condition in request.iter(f"{{{T}}}IsEqualTo"):
            # The message page looks up an item V2 imported (no item id yet) by its Message-ID.
            field = condition.find(f"{{{T}}}FieldURI").get("FieldURI")
            value = condition.find(f".//{{{T}}}Constant").get("Value")
            assert field == "message:InternetMessageId", field
            items = [item for item in items if item["message_id"] == value]
        view = request.find(f"{{{M}}}IndexedPageItemView")
        offset, limit = int(view.get("Offset", 0)), int(view.get("MaxEntriesReturned", 100))
        page = items[offset : offset + limit]
        last = "true" if offset + len(page) >= len(items) else "false"
        return (
            '<m:FindItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
            f'<m:RootFolder IndexedPagingOffset="{offset + len(page)}" TotalItemsInView="{len(items)}" '
            f'IncludesLastItemInRange="{last}"><t:Items>{"".join(_message(i) for i in page)}</t:Items></m:RootFolder>'
            "</m:FindItemResponseMessage>"
        )

    def get_item(self, request) -> str:
        by_id = {item["id"]: item for items in self.folders.values() for item in items}
        answers = []
        for ident in request.iter(f"{{{T}}}ItemId"):
            item = by_id.get(ident.get("Id"))
            answers.append(
                _error("GetItem", "ErrorItemNotFound", "The specified object was not found in the store.")
                if item is None else
                _error("GetItem", error, "The item cannot be read.")
                if (error := item.pop("get_error_once", None) or item.get("get_error")) else
                '<m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
                f"<m:Items>{_message(item, _content(item, request))}</m:Items></m:GetItemResponseMessage>"
            )
        return "".join(answers)

    def _state(self, seen: int, folder: str = "inbox") -> str:
        """An opaque state, valid for one folder (whatever its name now) until invalidate_sync_states()."""
        return base64.b64encode(f"fake:{self.epoch}:{self.hierarchy[folder]['id']}:{seen}".encode()).decode()

    def _parse_state(self, state: str, folder: str) -> int | None:
        if not state:
            return 0
        try:
            magic, epoch, folder_id, seen = base64.b64decode(state, validate=True).decode().split(":")
            valid = magic == "fake" and int(epoch) == self.epoch and folder_id == self.hierarchy[folder]["id"]
            return int(seen) if valid else None
        except ValueError:
            return None


_CERTIFICATE = []


def _certificate() -> tuple[Path, Path]:
    """One self-signed certificate (localhost, 127.0.0.1) per test process: RSA keys are slow to make."""
    if not _CERTIFICATE:
        _CERTIFICATE.extend(make_certificate(Path(tempfile.mkdtemp(prefix="fake-ews-"))))
    return _CERTIFICATE[0], _CERTIFICATE[1]


OPERATIONS = {
    "GetFolder": FakeEWS.get_folder, "FindFolder": FakeEWS.find_folder, "SyncFolderItems": FakeEWS.sync_folder_items,
    "FindItem": FakeEWS.find_item, "GetItem": FakeEWS.get_item,
    "Subscribe": lambda fake, request: fake.notify.subscribe(request),
    "GetEvents": lambda fake, request: fake.notify.get_events(request),
    "Unsubscribe": lambda fake, request: fake.notify.unsubscribe(request),
}
