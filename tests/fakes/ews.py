"""A fake Exchange Web Services endpoint for exchangelib, over HTTPS on 127.0.0.1.

It speaks just enough SOAP for sync.exchange.client: GetFolder (any distinguished folder),
SyncFolderItems (paging with IncludesLastItemInRange, opaque sync states,
ErrorInvalidSyncStateData for a state it did not issue or has invalidated),
FindItem (a DateTimeReceived >= restriction, paged), GetItem and a 401 for a wrong
password (Basic auth). Every answer carries a ServerVersionInfo header.

    ews = FakeEWS(username="CORP\\\\anna", password="pw").start()
    ews.deliver("inbox", subject="Hallo", received=datetime(...))
    ews.url  -> "https://localhost:PORT/EWS/Exchange.asmx"; ews.cert_pem is its CA
"""

import base64
import itertools
import ssl
import tempfile
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

import spnego
import spnego.exceptions

from portal.devservers import make_certificate
from tests.fakes.local_server import listen, serve_in_background, shut

S = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
ENVELOPE = (
    f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{S}" xmlns:m="{M}" xmlns:t="{T}"><s:Header>'
    '<t:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="6" '
    'Version="V2017_07_11"/></s:Header><s:Body>{body}</s:Body></s:Envelope>'
)


class FakeEWS:
    def __init__(self, *, username: str, password: str, page_size: int | None = None, auth: str = "basic"):
        self.username, self.password = username, password
        # "basic", or "ntlm": a real NTLMv2 handshake per connection (pyspnego as the acceptor),
        # announced as "Negotiate, NTLM" like IIS does.
        self.auth = auth
        self.page_size = page_size  # None: the client's MaxChangesReturned
        self.folders: dict[str, list[dict]] = {"inbox": [], "sentitems": []}
        self.calls: list[str] = []
        # operation -> EWS ResponseCode to answer with instead ("GetFolder": "ErrorMailboxStoreUnavailable")
        self.failures: dict[str, str] = {}
        self.epoch = 1  # sync states of another epoch are invalid
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        cert, key = _certificate()
        self.cert_pem = cert.read_text()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = listen(_handler(self), context)
        self.port = self._server.server_address[1]
        self.url = f"https://localhost:{self.port}/EWS/Exchange.asmx"

    def start(self) -> "FakeEWS":
        serve_in_background(self._server)
        return self

    def stop(self) -> None:
        shut(self._server)

    def ntlm_user_file(self, directory: Path) -> Path:
        """pyspnego's acceptor reads the accounts it knows from the file NTLM_USER_FILE names."""
        domain, _sep, user = self.username.rpartition("\\")
        path = directory / "ntlm-users"
        path.write_text(f"{domain}:{user}:{self.password}\n")
        return path

    def deliver(self, folder: str = "inbox", *, subject: str, message_id: str | None = None,
                received: datetime | None = None, sender: str = "kunde@example.org", size: int = 1234) -> dict:
        with self._lock:
            seq = next(self._seq)
            item = {"seq": seq, "id": f"AAMk{seq:08d}", "subject": subject, "sender": sender, "size": size,
                    "message_id": f"<m{seq}@example.org>" if message_id is None else message_id,
                    "received": received or datetime.now(timezone.utc)}
            self.folders[folder].append(item)
        return item

    def invalidate_sync_states(self) -> None:
        self.epoch += 1

    # --- operations ---------------------------------------------------------------------------------------------

    def get_folder(self, request) -> str:
        folders = []
        for ident in request.iter(f"{{{T}}}DistinguishedFolderId"):
            name = ident.get("Id")
            total = len(self.folders.get(name, []))
            folders.append(
                f'<t:Folder><t:FolderId Id="{name}-id" ChangeKey="ck"/><t:FolderClass>IPF.Note</t:FolderClass>'
                f"<t:DisplayName>{name}</t:DisplayName><t:TotalCount>{total}</t:TotalCount>"
                "<t:ChildFolderCount>0</t:ChildFolderCount><t:UnreadCount>0</t:UnreadCount></t:Folder>"
            )
        return "".join(
            f'<m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
            f"<m:Folders>{folder}</m:Folders></m:GetFolderResponseMessage>" for folder in folders
        )

    def sync_folder_items(self, request) -> str:
        name = _folder_name(request)
        state = request.findtext(f"{{{M}}}SyncState") or ""
        seen = self._parse_state(state)
        if seen is None:
            # Exchange's own error answer carries an empty SyncState (exchangelib reads it first).
            return _error("SyncFolderItems", "ErrorInvalidSyncStateData",
                          "Synchronization state data is corrupt or otherwise invalid.",
                          extra="<m:SyncState/><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange>")
        limit = self.page_size or int(request.findtext(f"{{{M}}}MaxChangesReturned") or 100)
        pending = [item for item in self.folders[name] if item["seq"] > seen]
        page = pending[:limit]
        new_seen = page[-1]["seq"] if page else seen
        changes = "".join(f"<t:Create>{_message(item)}</t:Create>" for item in page)
        last = "true" if len(pending) <= limit else "false"
        return (
            '<m:SyncFolderItemsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
            f"<m:SyncState>{self._state(new_seen)}</m:SyncState>"
            f"<m:IncludesLastItemInRange>{last}</m:IncludesLastItemInRange><m:Changes>{changes}</m:Changes>"
            "</m:SyncFolderItemsResponseMessage>"
        )

    def find_item(self, request) -> str:
        name = _folder_name(request)
        items = sorted(self.folders[name], key=lambda item: item["received"], reverse=True)
        for condition in request.iter(f"{{{T}}}IsGreaterThanOrEqualTo"):
            field = condition.find(f"{{{T}}}FieldURI").get("FieldURI")
            value = condition.find(f".//{{{T}}}Constant").get("Value")
            assert field == "item:DateTimeReceived", field  # the only restriction sync.exchange.client sends
            since = datetime.fromisoformat(value.replace("Z", "+00:00"))
            items = [item for item in items if item["received"] >= since]
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
                '<m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>'
                f"<m:Items>{_message(item)}</m:Items></m:GetItemResponseMessage>"
            )
        return "".join(answers)

    def _state(self, seen: int) -> str:
        return base64.b64encode(f"fake:{self.epoch}:{seen}".encode()).decode()

    def _parse_state(self, state: str) -> int | None:
        if not state:
            return 0
        try:
            magic, epoch, seen = base64.b64decode(state, validate=True).decode().split(":")
            return int(seen) if magic == "fake" and int(epoch) == self.epoch else None
        except ValueError:
            return None


_CERTIFICATE = []


def _certificate() -> tuple[Path, Path]:
    """One self-signed certificate (localhost, 127.0.0.1) per test process: RSA keys are slow to make."""
    if not _CERTIFICATE:
        _CERTIFICATE.extend(make_certificate(Path(tempfile.mkdtemp(prefix="fake-ews-"))))
    return _CERTIFICATE[0], _CERTIFICATE[1]


def _folder_name(request) -> str:
    ident = request.find(f".//{{{T}}}DistinguishedFolderId")
    if ident is not None:
        return ident.get("Id")
    return request.find(f".//{{{T}}}FolderId").get("Id").removesuffix("-id")


def _message(item: dict) -> str:
    received = item["received"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    message_id = ""
    if item["message_id"]:
        message_id = f"<t:InternetMessageId>{escape(item['message_id'])}</t:InternetMessageId>"
    return (
        f'<t:Message><t:ItemId Id={quoteattr(item["id"])} ChangeKey="ck"/>'
        f"<t:Subject>{escape(item['subject'])}</t:Subject>"
        f"<t:DateTimeReceived>{received}</t:DateTimeReceived><t:Size>{item['size']}</t:Size>"
        f"<t:Sender><t:Mailbox><t:Name>Kunde</t:Name><t:EmailAddress>{escape(item['sender'])}</t:EmailAddress>"
        f"</t:Mailbox></t:Sender>{message_id}</t:Message>"
    )


def _error(operation: str, code: str, text: str, extra: str = "") -> str:
    return (
        f'<m:{operation}ResponseMessage ResponseClass="Error"><m:MessageText>{escape(text)}</m:MessageText>'
        f"<m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
        f"{extra}</m:{operation}ResponseMessage>"
    )


OPERATIONS = {
    "GetFolder": FakeEWS.get_folder, "SyncFolderItems": FakeEWS.sync_folder_items, "FindItem": FakeEWS.find_item,
    "GetItem": FakeEWS.get_item,
}


def _handler(fake: FakeEWS):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def log_message(self, *args):  # keep test output clean
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not self._authenticated():
                return None
            request = ET.fromstring(body).find(f"{{{S}}}Body")[0]
            operation = request.tag.split("}", 1)[1]
            fake.calls.append(operation)
            with fake._lock:
                if operation in fake.failures:
                    messages = _error(operation, fake.failures[operation], "Injected by the test.")
                elif operation in OPERATIONS:
                    messages = OPERATIONS[operation](fake, request)
                else:  # e.g. ConvertId, which exchangelib sends to learn the version from the header
                    messages = _error(operation, "ErrorInvalidIdMalformed", "Id is malformed.")
            answer = ENVELOPE.format(body=f"<m:{operation}Response><m:ResponseMessages>{messages}"
                                          f"</m:ResponseMessages></m:{operation}Response>")
            self._send(200, answer.encode(), {"Content-Type": "text/xml; charset=utf-8"})

        def _authenticated(self) -> bool:
            header = self.headers.get("Authorization") or ""
            if fake.auth == "basic":
                expected = base64.b64encode(f"{fake.username}:{fake.password}".encode()).decode()
                if header == f"Basic {expected}":
                    return True
                fake.calls.append("401")
                self._send(401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})
                return False
            # NTLM authenticates the TCP connection, not the request (IIS does the same):
            # this handler object lives as long as the connection.
            if getattr(self, "ntlm_done", False):
                return True
            if not header.startswith("NTLM "):
                fake.calls.append("401")
                self._send(401, b"", {"WWW-Authenticate": "Negotiate, NTLM"})
                return False
            if not hasattr(self, "ntlm"):
                self.ntlm = spnego.server(protocol="ntlm")
            try:
                answer = self.ntlm.step(base64.b64decode(header[5:]))
            except spnego.exceptions.SpnegoError:
                fake.calls.append("401")
                del self.ntlm
                self._send(401, b"", {"WWW-Authenticate": "Negotiate, NTLM"})
                return False
            if not self.ntlm.complete:  # the challenge
                fake.calls.append("ntlm-challenge")
                self._send(401, b"", {"WWW-Authenticate": "NTLM " + base64.b64encode(answer).decode()})
                return False
            fake.calls.append("ntlm-ok")
            self.ntlm_done = True
            return True

        def _send(self, status, payload, headers):
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler
