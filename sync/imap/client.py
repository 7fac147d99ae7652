"""IMAP connections to user-supplied hosts: TLS only, through the egress guard.

Errors are mapped to MailboxError codes that the UI translates; the original
exception text (which may echo server output) is never shown to users.

Caps on what a server can make a worker hold or wait for (settings
IMAP_MAX_MESSAGE_BYTES, IMAP_COMMAND_MAX_SECONDS): a literal (RFC 3501
section 4.3, "{size}" then size octets) bigger than the byte cap is refused
as soon as it is announced, before anything is allocated for it (imaplib
would allocate the announced size at once: "{2000000000}" asks for 2 GB);
all lines and literals of one command's answer together may not pass it
either (a server could otherwise send endless small untagged lines). Over
it: TooLarge, and the connection is shut down, since the rest of that
literal is still on the wire. One command's answer has at most
IMAP_COMMAND_MAX_SECONDS, however steadily it trickles in: TooSlow. Both are
OSError, so every caller that survives a broken connection survives them;
error_code() names them for the user.
"""

import contextlib
import imaplib
import os
import socket
import threading
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from sync import headers, leases
from sync.egress import EgressRefused, resolve_checked
from sync.errors import MailboxError
from sync.identity import FetchedMessage  # noqa: F401 - the engines' message type, re-exported

FETCH_ITEMS = ["INTERNALDATE", "RFC822.SIZE", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID SUBJECT FROM TO CC DATE CONTENT-TYPE)]"]
FETCH_BATCH = 500


class TooLarge(OSError):
    """A literal, or one command's whole answer, over IMAP_MAX_MESSAGE_BYTES; the connection was shut down."""


class TooSlow(TimeoutError):
    """One command's answer took longer than IMAP_COMMAND_MAX_SECONDS; the connection was shut down."""


def error_code(error: Exception) -> str:
    """The MailboxError code for an exception that ended an IMAP session: too_large, too_slow or protocol."""
    if isinstance(error, TooLarge):
        return "too_large"
    if isinstance(error, TooSlow):
        return "too_slow"
    return "protocol"


class _PinnedIMAP4(imaplib.IMAP4):
    """imaplib connection to an address checked by the egress guard, with byte and time caps.

    self.host keeps the name the user gave, so TLS (implicit or STARTTLS)
    verifies the certificate against that name, not against the address.
    imaplib reads every line through readline() and every literal through
    read(size); both count against the current command's caps, which start
    again with each send() (a command, or the continuation of one).
    """

    def __init__(self, host, port, *, address, ssl_context, implicit_tls, timeout):
        self._address = address
        self._ssl_context = ssl_context
        self._implicit_tls = implicit_tls
        self._io_timeout = timeout
        self._max_bytes = settings.IMAP_MAX_MESSAGE_BYTES
        self._max_seconds = settings.IMAP_COMMAND_MAX_SECONDS
        self._capabilities_read = False
        self._start_answer()  # the greeting is an answer too
        super().__init__(host, port, timeout)

    def _start_answer(self) -> None:
        self._deadline = time.monotonic() + self._max_seconds
        self._answer_bytes = 0

    def send(self, data):
        self._start_answer()
        super().send(data)

    def _give_up(self, error: OSError):
        # The rest of the answer is still on the wire: this connection can never be used again.
        _shutdown_socket(self.sock)
        raise error

    def _too_slow(self):
        self._give_up(TooSlow(f"no complete answer within {self._max_seconds} s"))

    def _recv(self, read):
        """read() (at most one recv()), its wait bounded by the deadline; TooSlow once that has passed."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self._too_slow()
        self.sock.settimeout(min(remaining, self._io_timeout) if self._io_timeout else remaining)
        try:
            return read()
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                self._too_slow()
            raise  # MAIL_CONNECT_TIMEOUT without a byte: a plain timeout, as before

    def _count(self, size: int, what: str) -> None:
        self._answer_bytes += size
        if size > self._max_bytes or self._answer_bytes > self._max_bytes:
            self._give_up(TooLarge(f"{what} of {size} octets (IMAP_MAX_MESSAGE_BYTES {self._max_bytes})"))

    def read(self, size):
        """A literal of `size` octets, refused before anything is read when it is over the cap."""
        self._count(size, "literal")
        data = bytearray()
        while len(data) < size:
            chunk = self._recv(lambda: self.file.read1(min(size - len(data), 65536)))  # at most one recv()
            if not chunk:
                break  # the server closed: imaplib fails on the missing rest
            data += chunk
        return bytes(data)

    def readline(self):
        """One line, at most imaplib's _MAXLINE octets, read recv() by recv() against the deadline."""
        line = bytearray()
        while True:
            buffered = self._recv(lambda: self.file.peek(1))  # what is buffered, or one recv() when nothing is
            if not buffered:
                break
            end = buffered.find(b"\n")
            line += self.file.read(len(buffered) if end < 0 else end + 1)  # from the buffer only
            if end >= 0:
                break
            if len(line) > imaplib._MAXLINE:
                raise self.error(f"got more than {imaplib._MAXLINE} bytes")
        self._count(len(line), "answer")
        return bytes(line)

    def _get_capabilities(self):
        # imaplib asks CAPABILITY right after the greeting: one round trip per connection
        # that a server naming its capabilities in the greeting (RFC 3501 section 7.1, Dovecot
        # and most servers do) makes needless. Only the greeting's are taken: after STARTTLS
        # the list is asked for again over TLS (RFC 2595 section 3.1), never taken from an
        # answer sent before it. Popped either way, so IMAPClient later reads the list the
        # server sends at LOGIN, not this pre-login one.
        greeting = self.untagged_responses.pop("CAPABILITY", None)
        if greeting and not self._capabilities_read and isinstance(greeting[-1], bytes):
            self.capabilities = tuple(greeting[-1].decode("ascii", "replace").upper().split())
        else:
            super()._get_capabilities()
        self._capabilities_read = True

    def _create_socket(self, timeout=None):
        sock = socket.create_connection((self._address, self.port), timeout)
        if self._implicit_tls:
            sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)  # takes the file descriptor over
        # A sync run that passes SYNC_RUN_MAX_SECONDS has its socket shut down (sync.leases);
        # STARTTLS later wraps this same descriptor, so shutting it down ends that connection too.
        leases.on_overrun(lambda: _shutdown_socket(sock))
        return sock


def _shutdown_socket(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


class LoginTooSlow(TimeoutError):
    """No answer to LOGIN/AUTHENTICATE within MAIL_LOGIN_TIMEOUT: the server is reachable (it greeted us)."""


class GuardedIMAPClient(IMAPClient):
    def __init__(self, host, *, port, address, implicit_tls, ssl_context, timeout):
        self._pinned_address = address
        super().__init__(host, port=port, ssl=implicit_tls, ssl_context=ssl_context, timeout=timeout)

    @contextlib.contextmanager
    def waiting_for_login(self):
        """Each wait for bytes may last MAIL_LOGIN_TIMEOUT seconds instead of MAIL_CONNECT_TIMEOUT while
        logging in; a timeout then raises LoginTooSlow (a server that delays logins after failed ones)."""
        imap = self._imap
        before, imap._io_timeout = imap._io_timeout, settings.MAIL_LOGIN_TIMEOUT
        try:
            yield
        except TooSlow:
            raise
        except TimeoutError as error:
            raise LoginTooSlow(f"no answer to the login within {settings.MAIL_LOGIN_TIMEOUT} s") from error
        finally:
            imap._io_timeout = before

    def _create_IMAP4(self):
        return _PinnedIMAP4(
            self.host, self.port, address=self._pinned_address, ssl_context=self.ssl_context,
            implicit_tls=self.ssl, timeout=getattr(self._timeout, "connect", None),
        )


_contexts: dict[tuple, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def tls_context() -> ssl.SSLContext:
    """The process's TLS client context for mail servers: the system CAs plus MAIL_TLS_CA_FILE.

    Built once per process and reused by every connection: loading the CA
    store costs ~20 ms of CPU, about two thirds of an unchanged account's
    sync. An SSLContext may be shared by threads (its wrap_socket is
    thread-safe). Built again when MAIL_TLS_CA_FILE names another file or the
    file changed (size, modification time), so a renewed CA is picked up.
    """
    ca_file = settings.MAIL_TLS_CA_FILE
    key = (ca_file, _file_version(ca_file)) if ca_file else (None, None)
    context = _contexts.get(key)
    if context is None:
        with _contexts_lock:
            context = _contexts.get(key)
            if context is None:
                context = ssl.create_default_context()
                if ca_file:
                    context.load_verify_locations(cafile=ca_file)
                _contexts.clear()  # the old settings' context is not used again
                _contexts[key] = context
    return context


def _file_version(path: str) -> tuple:
    try:
        stat = os.stat(path)
    except OSError:
        return ()  # load_verify_locations reports it
    return (stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int
    security: str  # "ssl" or "starttls"
    username: str


def open_mailbox(server: ImapSettings, password: str, *, access_token: str = "") -> IMAPClient:
    """Connect, secure and log in; raise MailboxError with a code on failure.

    access_token: log in with SASL XOAUTH2 instead of the password (Google's
    IMAP, https://developers.google.com/gmail/imap/xoauth2-protocol: the initial
    response "user=<user>^Aauth=Bearer <token>^A^A"); a refused token is
    "auth_failed" like a refused password.
    """
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
        with client.waiting_for_login():
            if access_token:
                client.oauth2_login(server.username, access_token)
            else:
                client.login(server.username, password)
        return client
    except MailboxError:
        _close_quietly(client)
        raise
    except LoginError:
        _close_quietly(client)
        raise MailboxError("auth_failed", permanent=True) from None
    except (TooLarge, TooSlow) as error:
        _close_quietly(client)
        raise MailboxError(error_code(error), permanent=False) from None
    except LoginTooSlow:
        _close_quietly(client)
        raise MailboxError("login_slow", permanent=False) from None
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


def _fields(data: dict) -> bytes | None:
    # The server names the item after what was asked (BODY[HEADER.FIELDS (...)]);
    # NIL (None) when another client expunged the message after our SEARCH.
    for key, value in data.items():
        if isinstance(key, bytes) and key.startswith(b"BODY[HEADER"):
            return value
    return None


def parse_fetched(uid: int, data: dict) -> FetchedMessage | None:
    """One FETCH answer as a FetchedMessage; None when the server sent no headers (expunged).

    Headers are read by sync.headers (tolerant of anything real mail holds).
    """
    raw = _fields(data)
    if raw is None:
        return None
    fields = headers.split_fields(bytes(raw))
    hint = headers.charset_hint(fields)

    def value(name: str) -> str:
        return headers.decode_value(b" ".join(fields.get(name, [])[:1]), hint)

    received = data.get(b"INTERNALDATE")
    if isinstance(received, datetime):
        # IMAPClient returns INTERNALDATE as local naive time by default.
        received = received.astimezone(dt_timezone.utc)
    else:
        received = None
    size = data.get(b"RFC822.SIZE")
    return FetchedMessage(
        message_id=value("message-id")[:998], subject=value("subject")[:500], sender=value("from")[:500],
        to=value("to")[:2000], cc=value("cc")[:2000], sent_at=headers.parse_date(value("date")),
        received_at=received, size=int(size) if isinstance(size, int) else 0, uid=uid,
    )


def fetch_batches(client: IMAPClient, uids: list[int], *, skipped: list | None = None):
    """FETCH headers in batches of FETCH_BATCH UIDs; yield each batch as a list of FetchedMessage.

    Batched because one command per message is ~7x slower; yielded batch by
    batch so a folder of 100,000 messages is never held in memory at once.
    Messages expunged meanwhile (absent from the answer, or NIL parts, RFC 3501
    section 7.4.2) are left out: they are gone from the mailbox. A message
    whose answer cannot be read at all is left out too and, when `skipped` is a
    list, noted there as (uid, reason, detail) for the caller to record.
    """
    ordered = sorted(set(uids))
    for start in range(0, len(ordered), FETCH_BATCH):
        batch = []
        for uid, data in client.fetch(ordered[start : start + FETCH_BATCH], FETCH_ITEMS).items():
            try:
                message = parse_fetched(uid, data)
            except Exception as error:  # noqa: BLE001 - one bad message never stops a mailbox
                if skipped is not None:
                    skipped.append((uid, "unreadable", type(error).__name__))
                continue
            if message is not None:
                batch.append(message)
        yield batch


def fetch_messages(client: IMAPClient, uids: list[int], *, skipped: list | None = None) -> list[FetchedMessage]:
    """All of fetch_batches in one list (for small sets: V2's date window, probes)."""
    return [message for batch in fetch_batches(client, uids, skipped=skipped) for message in batch]
