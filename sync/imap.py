"""IMAP connections to user-supplied hosts: TLS only, through the egress guard.

Errors are mapped to MailboxError codes that the UI translates; the original
exception text (which may echo server output) is never shown to users.
"""

import email.utils
import hashlib
import imaplib
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

from django.conf import settings
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from sync.egress import EgressRefused, resolve_checked

HEADER_FIELDS = b"BODY[HEADER.FIELDS (MESSAGE-ID SUBJECT FROM TO DATE)]"
FETCH_ITEMS = ["INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID SUBJECT FROM TO DATE)]"]
FETCH_BATCH = 500
# Folders whose mail does not belong in the CRM.
SKIPPED_FLAGS = {b"\\Noselect", b"\\NonExistent", b"\\Trash", b"\\Junk", b"\\Drafts", b"\\All"}


class MailboxError(Exception):
    """code: auth_failed | unreachable | tls_failed | protocol."""

    def __init__(self, code: str, *, permanent: bool):
        super().__init__(code)
        self.code = code
        self.permanent = permanent


class _PinnedIMAP4(imaplib.IMAP4):
    """imaplib connection to an address checked by the egress guard.

    self.host keeps the name the user gave, so TLS (implicit or STARTTLS)
    verifies the certificate against that name, not against the address.
    """

    def __init__(self, host, port, *, address, ssl_context, implicit_tls, timeout):
        self._address = address
        self._ssl_context = ssl_context
        self._implicit_tls = implicit_tls
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout=None):
        sock = socket.create_connection((self._address, self.port), timeout)
        if self._implicit_tls:
            return self._ssl_context.wrap_socket(sock, server_hostname=self.host)
        return sock


class GuardedIMAPClient(IMAPClient):
    def __init__(self, host, *, port, address, implicit_tls, ssl_context, timeout):
        self._pinned_address = address
        super().__init__(host, port=port, ssl=implicit_tls, ssl_context=ssl_context, timeout=timeout)

    def _create_IMAP4(self):
        return _PinnedIMAP4(
            self.host, self.port, address=self._pinned_address, ssl_context=self.ssl_context,
            implicit_tls=self.ssl, timeout=getattr(self._timeout, "connect", None),
        )


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.MAIL_TLS_CA_FILE:
        context.load_verify_locations(cafile=settings.MAIL_TLS_CA_FILE)
    return context


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int
    security: str  # "ssl" or "starttls"
    username: str


def open_mailbox(server: ImapSettings, password: str) -> IMAPClient:
    """Connect, secure and log in; raise MailboxError with a code on failure."""
    context = tls_context()
    client = None
    try:
        address = resolve_checked(server.host, server.port)
        client = GuardedIMAPClient(
            server.host, port=server.port, address=address, implicit_tls=server.security == "ssl",
            ssl_context=context, timeout=settings.MAIL_CONNECT_TIMEOUT,
        )
        if server.security != "ssl":
            # Never send a password in clear text: no STARTTLS, no login.
            if b"STARTTLS" not in client.capabilities():
                raise MailboxError("tls_failed", permanent=True)
            client.starttls(context)
        client.login(server.username, password)
        return client
    except MailboxError:
        _close_quietly(client)
        raise
    except LoginError:
        _close_quietly(client)
        raise MailboxError("auth_failed", permanent=True) from None
    except (ssl.SSLError, ssl.CertificateError):
        _close_quietly(client)
        raise MailboxError("tls_failed", permanent=True) from None
    except (EgressRefused, OSError):
        # Refused, unknown, closed and timed-out hosts look the same to the user.
        _close_quietly(client)
        raise MailboxError("unreachable", permanent=False) from None
    except (IMAPClientError, imaplib.IMAP4.error):
        _close_quietly(client)
        raise MailboxError("protocol", permanent=False) from None


def _close_quietly(client) -> None:
    if client is None:
        return
    try:
        client.logout()
    except Exception:  # noqa: BLE001 - the connection is broken anyway
        try:
            client.shutdown()
        except Exception:  # noqa: BLE001
            pass


def close(client) -> None:
    _close_quietly(client)


def syncable_folders(client: IMAPClient) -> list[str]:
    names = []
    for flags, _delimiter, name in client.list_folders():
        if SKIPPED_FLAGS.intersection(flags):
            continue
        names.append(name)
    return names


def folder_cursor(client: IMAPClient, folder: str) -> dict:
    items = ["UIDVALIDITY", "UIDNEXT"]
    if b"CONDSTORE" in client.capabilities():
        items.append("HIGHESTMODSEQ")
    status = client.folder_status(folder, items)
    return {
        "uidvalidity": int(status[b"UIDVALIDITY"]),
        "uidnext": int(status[b"UIDNEXT"]),
        "highestmodseq": int(status[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in status else None,
    }


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    dedup_key: str
    message_id: str
    subject: str
    sender: str
    received_at: datetime | None
    size: int


def dedup_key_for(message_id: str, headers) -> str:
    """The per-account identity of a message, shared by V2 and V3.

    Message-ID when there is one; otherwise a hash of headers that do not
    change between fetches (no UID: it differs between folders and engines).
    """
    normalized = message_id.strip().strip("<>").strip()
    if normalized:
        return normalized[:300]
    stable = "\n".join(str(headers.get(name, "")).strip() for name in ("Date", "From", "To", "Subject"))
    return "sha256:" + hashlib.sha256(stable.encode("utf-8", "replace")).hexdigest()


def _parse(uid: int, data: dict) -> FetchedMessage:
    headers = BytesHeaderParser(policy=default_policy).parsebytes(data.get(HEADER_FIELDS, b""))
    message_id = str(headers.get("Message-ID", "") or "")
    received = data.get(b"INTERNALDATE")
    if received is None and headers.get("Date"):
        try:
            received = email.utils.parsedate_to_datetime(str(headers["Date"]))
        except (TypeError, ValueError):
            received = None
    if received is not None and received.tzinfo is None:
        # IMAPClient returns INTERNALDATE as local naive time by default.
        received = received.astimezone(dt_timezone.utc)
    return FetchedMessage(
        uid=uid, dedup_key=dedup_key_for(message_id, headers), message_id=message_id.strip()[:998],
        subject=str(headers.get("Subject", "") or "")[:500], sender=str(headers.get("From", "") or "")[:500],
        received_at=received, size=int(data.get(b"RFC822.SIZE", 0) or 0),
    )


def fetch_messages(client: IMAPClient, uids: list[int]) -> list[FetchedMessage]:
    """FETCH headers in batches: one command per message is ~7x slower."""
    fetched = []
    ordered = sorted(set(uids))
    for start in range(0, len(ordered), FETCH_BATCH):
        batch = ordered[start : start + FETCH_BATCH]
        for uid, data in client.fetch(batch, FETCH_ITEMS).items():
            fetched.append(_parse(uid, data))
    return fetched
