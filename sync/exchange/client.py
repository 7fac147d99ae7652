"""Exchange on-premises over EWS (exchangelib), behind the egress guard.

Errors are mapped to sync.imap.client.MailboxError codes (auth_failed, unreachable,
tls_failed, protocol), so the migration and the UI treat both protocols alike.

Why a Protocol subclass: exchangelib picks its HTTP adapter from the global
class attribute BaseProtocol.HTTP_ADAPTER_CLS and caches Protocol objects per
(endpoint, credentials) for the whole process. Changing the global would
affect every other connection; the cache would keep credentials and a pinned
address alive. So every connection builds its own _GuardedProtocol outside
that cache, and its sessions mount a PinnedAdapter: TCP goes to the address
the guard checked, TLS verifies the URL's host name, an account's own CA
(PEM) is trusted in addition to the system's, and verification is never off.

NTLM carries the TLS channel binding (Extended Protection, which Exchange Server
2019 CU14+ requires by default; RFC 5929 "tls-server-end-point", MS-NLMP
MsvAvChannelBindings): exchangelib's NTLM is requests_ntlm, which hashes the
certificate of the socket the 401 arrived on. That needs the response's raw
urllib3 object with its socket still open, so nothing in the adapter may read
a body before the auth hook has seen it (tests/test_ews_extended_protection.py).
"""

import email.utils
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

import requests
from django.conf import settings
from exchangelib import BASIC, DELEGATE, NTLM, Account, Build, Configuration, Credentials, Version
from exchangelib.errors import (
    CASError, EWSError, ErrorAccessDenied, ErrorConnectionFailed, ErrorImpersonateUserDenied,
    ErrorInternalServerTransientError, ErrorInvalidSyncStateData, ErrorItemNotFound, ErrorMailboxMoveInProgress,
    ErrorMailboxStoreUnavailable, ErrorNonExistentMailbox, ErrorServerBusy, ErrorTimeoutExpired,
    ErrorTooManyObjectsOpened, MalformedResponseError, ResponseMessageError, TransportError, UnauthorizedError,
)
from exchangelib.fields import FieldPath
from exchangelib.items import ID_ONLY, Message
from exchangelib.properties import FolderId
from exchangelib.errors import RateLimitError
from exchangelib.protocol import CachingProtocol, FaultTolerance, Protocol
from exchangelib.services import GetItem, SyncFolderItems
from exchangelib.services.sync_folder_hierarchy import SyncFolder
from exchangelib.util import MNS
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from sync import egress
from sync.egress import EgressError, EgressRefused, PinnedAdapter, resolve_checked
from sync.errors import MailboxError
from sync.exchange.folders import mail_folders
from sync.identity import FetchedMessage

# What GetItem reads per message (Message fields in exchangelib's names): "author" is From, the
# identity's sender; "sender" (the Sender header) stands in when a message has no From.
ITEM_FIELDS = ("message_id", "subject", "author", "sender", "to_recipients", "cc_recipients", "datetime_sent",
               "datetime_received", "size")
# Errors that say the server is busy or down, not that an item is bad: the run fails and is tried again.
TRANSIENT = (ErrorServerBusy, ErrorTimeoutExpired, ErrorMailboxStoreUnavailable, ErrorInternalServerTransientError,
             ErrorMailboxMoveInProgress, ErrorConnectionFailed, ErrorTooManyObjectsOpened)
# This login may not open this mailbox (ErrorAccessDenied, ErrorNonExistentMailbox): not a refused password.
MAILBOX_DENIED = "ews_mailbox_denied"
SYNC_PAGE = 512  # the most SyncFolderItems returns per call
FETCH_CHUNK = 100
READ_TIMEOUT = 60  # seconds for one EWS answer (a page of 512 changes can take a while)
AUTH_TYPES = {"ntlm": NTLM, "basic": BASIC}
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')  # RFC 5322 specials: such a display name is quoted


@dataclass(frozen=True)
class EwsSettings:
    url: str  # https://mail.example.com/EWS/Exchange.asmx
    username: str  # DOMAIN\user or user@domain (UPN)
    address: str  # the mailbox's primary SMTP address
    auth_type: str = "ntlm"
    ca_pem: str = ""  # the customer's own CA certificate(s), PEM
    version: str = ""  # "15.1.2507.6"; empty: ask the server once per connection


def error_code(code: str) -> str:
    """Exchange's own wording for the codes where IMAP's advice would mislead (app passwords, no CA field)."""
    return f"ews_{code}" if code in ("auth_failed", "tls_failed") else code


def ews_url_for(host_or_url: str) -> str:
    """What users type ("mail.example.com", "mail.example.com:8443" or a URL) as the EWS URL.

    Only https: EWS credentials (Basic, NTLM) never travel in clear text.
    """
    value = host_or_url.strip()
    if "://" not in value:
        value = f"https://{value.strip('/')}/EWS/Exchange.asmx"
    scheme, host, _port = egress.split_url(value)
    if scheme != "https":
        raise ValueError("EWS needs https")
    if value.rstrip("/").count("/") == 2:  # just https://host[:port]
        value = value.rstrip("/") + "/EWS/Exchange.asmx"
    return value


_BACK_OFF_MS = re.compile(rb'Name="BackOffMilliseconds"[^>]*>\s*(\d+)\s*<')
# A minimal request for the fresh sign-in that decides whether a 401 means a refused password.
_SIGN_IN_PROBE = (
    '<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
    'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body><m:GetFolder>'
    "<m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>"
    '<t:DistinguishedFolderId Id="msgfolderroot"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>'
).encode()


class PasswordRefused(UnauthorizedError):
    """A 401, and a fresh sign-in on a new connection was refused too."""


class _BoundedFaultTolerance(FaultTolerance):
    """exchangelib's fault-tolerant retry (Microsoft, "EWS throttling in Exchange": wait the
    BackOffMilliseconds of ErrorServerBusy, then try again), bounded twice: a single back-off longer
    than settings.EWS_RETRY_MAX_WAIT, or more than settings.EWS_RETRY_BUDGET seconds of waiting on
    one connection, gives up with RateLimitError (a transient "protocol" error: the next run tries
    again). exchangelib itself only caps each single wait.

    The back-off is honoured in both forms Exchange uses: a SOAP fault (often in an HTTP 500),
    which exchangelib reads itself, and an ErrorServerBusy response message, whose MessageXml
    exchangelib does not read (it would wait its own RETRY_WAIT): read here from the body.

    A 401 is not taken for a refused password at once: Exchange also answers 401 while it
    throttles. It is one only when a fresh sign-in on a new connection (sign_in_refused) is
    refused too; otherwise the request is tried again after a back-off.
    """

    MAX_BACK_OFFS = 100  # also bounded in number: back-offs of 0 ms would never use up the budget

    def __init__(self, *, max_wait: float, budget: float):
        super().__init__(max_wait=max_wait)
        self.budget = budget
        self.waited, self.back_offs = 0.0, 0
        self.hint: float | None = None  # BackOffMilliseconds of the last busy answer, in seconds
        self.sign_in_refused = None  # set by open_account: () -> bool
        self.on_wait = None  # () -> None before each wait: verify's heartbeat (a wait is no sign of a stuck worker)

    def __getstate__(self):
        state = super().__getstate__()
        state["sign_in_refused"] = state["on_wait"] = None
        return state

    def back_off(self, seconds):
        if self.hint is not None:
            seconds, self.hint = self.hint, None
        if seconds is None:
            seconds = min(self.DEFAULT_BACKOFF, self.max_wait)
        self.back_offs += 1
        if seconds > self.max_wait or self.waited + seconds > self.budget or self.back_offs > self.MAX_BACK_OFFS:
            raise RateLimitError("EWS back-off budget exhausted", wait=seconds)
        self.waited += seconds
        if self.on_wait is not None:
            self.on_wait()
        super().back_off(seconds)

    def raise_response_errors(self, response):
        if response.status_code == 401 and b"locked out" not in (response.content or b""):
            if self.sign_in_refused is not None and self.sign_in_refused():
                raise PasswordRefused(f"Invalid credentials for {response.url}")
            raise ErrorServerBusy("Caused by HTTP 401 response (throttling)")
        if response.status_code in (200, 500) and b"ErrorServerBusy" in (response.content or b""):
            found = _BACK_OFF_MS.search(response.content)
            self.hint = int(found.group(1)) / 1000.0 if found else None
        try:
            return super().raise_response_errors(response)
        except MalformedResponseError:
            # exchangelib retries 503 and some 500s; a load balancer's 502/504 or an IIS error page in a 500
            # is as passing: tried again after a back-off, then a transient error (RateLimitError).
            if 500 <= response.status_code < 600:
                raise ErrorInternalServerTransientError(f"HTTP {response.status_code}") from None
            raise


class _GuardedProtocol(Protocol):
    def __init__(self, *, config, host: str, address: str, ca_pem: str):
        self._pin = {"host": host, "address": address, "ca_pem": ca_pem}
        super().__init__(config=config)
        self.TIMEOUT = (settings.MAIL_CONNECT_TIMEOUT, READ_TIMEOUT)
        # exchangelib's first wait when the server names none (doubling per retry); bounded by the policy.
        self.RETRY_WAIT = settings.EWS_RETRY_WAIT

    def sign_in_refused(self) -> bool:
        """A fresh sign-in on a new connection: is it refused (401) too? Anything else: not refused."""
        session = self.create_session()
        try:
            response = session.post(self.service_endpoint, data=_SIGN_IN_PROBE, allow_redirects=False,
                                     timeout=self.TIMEOUT, headers={"Content-Type": "text/xml; charset=utf-8"})
            return response.status_code == 401
        except (requests.RequestException, OSError):
            return False
        finally:
            session.close()

    def create_session(self):
        session = super().create_session()
        # No proxies, netrc or CA bundle from the environment (they would bypass the pin).
        session.trust_env = False
        # Same pool settings exchangelib uses (one connection, no urllib3 retries).
        # Every answer is capped (EWS_MAX_RESPONSE_BYTES after decompression, EWS_MAX_RESPONSE_SECONDS in all):
        # exchangelib itself reads a body whole, however big it inflates (issue 10: a ~400 KB gzip answer
        # raised a worker's memory by ~470 MB).
        session.mount(self.service_endpoint, PinnedAdapter(
            **self._pin, pool_block=True, pool_connections=1, pool_maxsize=1, max_retries=0,
            max_bytes=settings.EWS_MAX_RESPONSE_BYTES, max_seconds=settings.EWS_MAX_RESPONSE_SECONDS,
        ))
        return session


@contextmanager
def open_account(server: EwsSettings, password: str):
    """An exchangelib Account whose every request goes through the egress guard."""
    scheme, host, port = egress.split_url(server.url)
    if scheme != "https":
        # Basic and NTLM over plain http would expose the credentials; whoever set the URL.
        raise MailboxError("tls_failed", permanent=True)
    # Resolved and checked once; exchangelib then only ever talks to this address.
    address = resolve_checked(host, port)
    config = Configuration(
        service_endpoint=server.url, credentials=Credentials(server.username, password),
        auth_type=AUTH_TYPES.get(server.auth_type, NTLM),
        version=Version(build=Build(*map(int, server.version.split(".")))) if server.version else None,
        retry_policy=_BoundedFaultTolerance(max_wait=settings.EWS_RETRY_MAX_WAIT, budget=settings.EWS_RETRY_BUDGET),
    )
    protocol = _GuardedProtocol.__new__(_GuardedProtocol)  # not through CachingProtocol.__call__
    protocol.__init__(config=config, host=host, address=address, ca_pem=server.ca_pem)
    config.retry_policy.sign_in_refused = protocol.sign_in_refused
    # Account(config=...) asks CachingProtocol for a plain Protocol (no network
    # I/O happens there); drop that from the process-wide cache and use ours.
    account = Account(primary_smtp_address=server.address, config=config, autodiscover=False, access_type=DELEGATE)
    with CachingProtocol._protocol_cache_lock:
        CachingProtocol._protocol_cache.pop(CachingProtocol._cache_key(config), None)
    account.protocol = protocol
    try:
        yield account
    finally:
        protocol.close()


@contextmanager
def mailbox_errors():
    """Translate what exchangelib, requests and the guard raise into MailboxError codes.

    permanent=False only where the same attempt may work later: the server answered but was busy beyond the
    retry budget, slow, reset the connection or answered a 5xx (the migration then waits in verifying and
    tries again). A server that never answered (unknown name, closed port, no route, connect timeout), a
    refused password, a mailbox the login may not open, TLS, an answer beyond EWS_MAX_RESPONSE_BYTES and
    EWS errors about the request itself are permanent.
    """
    try:
        yield
    except MailboxError:
        raise
    except EgressRefused as error:
        # The policy or DNS refused the destination; only "resolver" (DNS could not be asked) may pass.
        raise MailboxError(error.code, permanent=error.reason != "resolver") from None
    except EgressError as error:
        permanent = error.code in ("tls_failed", "response_too_large") or _never_connected(error)
        raise MailboxError(error.code, permanent=permanent) from None
    except UnauthorizedError:
        raise MailboxError("auth_failed", permanent=True) from None
    except (ErrorAccessDenied, ErrorNonExistentMailbox, ErrorImpersonateUserDenied):
        # The sign-in worked, but this login may not open this mailbox (no rights on it, or no mailbox at
        # this address): not a wrong password, and no reason to stop the sync as one (no lockout risk).
        raise MailboxError(MAILBOX_DENIED, permanent=True) from None
    except (TransportError, EWSError, CASError, requests.RequestException, OSError) as error:
        # Read through the chain: exchangelib's version guess wraps whatever stopped it in a TransportError.
        chain = list(_chain(error))
        if _caused_by_tls(error):
            raise MailboxError("tls_failed", permanent=True) from None
        if _never_connected(error):
            raise MailboxError("unreachable", permanent=True) from None
        if any(isinstance(e, (ErrorTimeoutExpired, requests.ConnectionError, requests.Timeout, OSError)) for e in chain):
            raise MailboxError("unreachable", permanent=False) from None
        transient = any(isinstance(e, TRANSIENT + (RateLimitError,)) for e in chain)
        raise MailboxError("protocol", permanent=not transient) from None


def _chain(error: BaseException) -> Iterator[BaseException]:
    # exchangelib and the guard re-raise inside except blocks: the original stays reachable through
    # __cause__/__context__ (urllib3's MaxRetryError keeps its reason as __cause__).
    seen = 0
    while error is not None and seen < 12:
        yield error
        error = error.__cause__ or error.__context__
        seen += 1


def _never_connected(error: BaseException) -> bool:
    """No TCP connection came about (refused, no route, connect timeout): the host or port is wrong or down."""
    return any(isinstance(e, (NewConnectionError, ConnectTimeoutError)) for e in _chain(error))


def _caused_by_tls(error: BaseException) -> bool:
    return any(isinstance(e, (ssl.SSLError, ssl.CertificateError, requests.exceptions.SSLError)) for e in _chain(error))


def verify(server: EwsSettings, password: str, *, heartbeat=None) -> dict[str, dict]:
    """Log in, find every mail folder (sync.exchange.folders) and return a cursor per folder name:
    ``{"ews_folder_id": FolderId, "ews_folder": distinguished id or "", "ews_sync_state": state}``.

    Each folder is walked once with ids only (SyncFolderItems from an empty
    state), which proves it can be read; the state is recorded for support,
    but a folder's first V3 run reads the whole folder again (the handoff sets
    v3_synced_at to None), so no mail depends on this walk. A big mailbox
    takes a while: heartbeat() is called for every SYNC_PAGE items walked, and
    before each wait for a throttling back-off, so the caller can show it is alive. Errors: MailboxError.
    """
    with mailbox_errors(), open_account(server, password) as account:
        # Waiting out Exchange's back-offs (up to EWS_RETRY_BUDGET) must not look like a stuck verify.
        account.protocol.retry_policy.on_wait = heartbeat
        cursors = {}
        for folder in mail_folders(account):
            state, walked = "", 0
            for page in folder_changes(account, folder.id, ""):
                if heartbeat is not None:
                    for _beat in range((walked + page.changes) // SYNC_PAGE - walked // SYNC_PAGE):
                        heartbeat()
                walked += page.changes
                state = page.sync_state
            cursors[folder.name] = {"ews_folder_id": folder.id, "ews_folder": folder.distinguished,
                                    "ews_sync_state": state}
        return cursors


@dataclass(frozen=True)
class ChangePage:
    """One SyncFolderItems answer: ``created`` (ItemId, ChangeKey) of items created or moved into
    the folder, ``sync_state`` the state after them, ``changes`` how many changes of any kind it held."""

    created: list[tuple[str, str]]
    sync_state: str
    changes: int


def folder_changes(account: Account, folder_id: str, sync_state: str) -> Iterator[ChangePage]:
    """The folder's changes since sync_state ("" = every item in it, each as a create), page by page.

    SyncFolderItems (Microsoft: "SyncFolderItems operation") with ids only and
    up to SYNC_PAGE changes per call, until IncludesLastItemInRange. Updates,
    deletions and read-flag changes are counted, not returned: the CRM keeps
    what it imported. ErrorInvalidSyncStateData (states expire, mailbox
    databases get restored): the walk starts over from an empty state, i.e.
    the whole folder; the caller's identity dedup drops what it has.
    """
    try:
        yield from _pages(account, folder_id, sync_state)
    except ErrorInvalidSyncStateData:
        if not sync_state:
            raise
        yield from _pages(account, folder_id, "")


class _SyncFolderItems(SyncFolderItems):
    """exchangelib's SyncFolderItems reads SyncState and IncludesLastItemInRange before it looks at the
    ResponseCode: an error answer without them (ErrorServerBusy, ErrorInvalidSyncStateData in some
    Exchange builds) raised AttributeError instead of the error. Read them when present, then let
    exchangelib raise the answer's own error."""

    def _get_element_container(self, message, name=None):
        state, last = message.find(f"{{{MNS}}}SyncState"), message.find(self.last_in_range_name)
        self.sync_state = state.text if state is not None else None
        self.includes_last_item_in_range = (last.text or "").strip().lower() == "true" if last is not None else None
        return super(SyncFolder, self)._get_element_container(message=message, name=name)


def _pages(account: Account, folder_id: str, sync_state: str) -> Iterator[ChangePage]:
    service = _SyncFolderItems(account=account)
    state = sync_state or None
    while True:
        created, changes = [], 0
        for change, item in service.call(folder=FolderId(id=folder_id), shape=ID_ONLY, additional_fields=set(),
                                         sync_state=state, ignore=None, max_changes_returned=SYNC_PAGE,
                                         sync_scope=None):
            changes += 1
            if change == SyncFolderItems.CREATE:
                created.append((item.id, item.changekey))
        new_state = service.sync_state or ""
        yield ChangePage(created=created, sync_state=new_state, changes=changes)
        # Same guard as exchangelib's own loop: an unchanged state would repeat the same page forever.
        if service.includes_last_item_in_range or new_state == (state or ""):
            return
        state = new_state


def fetch_messages(account: Account, ids: list[tuple[str, str]], *,
                   skipped: list[tuple[str, str, str]]) -> list[FetchedMessage]:
    """GetItem for the identity fields of these items, FETCH_CHUNK per call.

    Why GetItem: SyncFolderItems need not return InternetMessageId and the
    sender (Microsoft's advice: sync ids, then GetItem). An item deleted
    meanwhile (ErrorItemNotFound) is left out. An item Exchange cannot read
    or we cannot convert is noted in `skipped` as (ItemId, "unreadable",
    error class name) and the others are returned; when such an item fails
    the whole call, the chunk is read again one item at a time to find it.
    Busy or unavailable servers (TRANSIENT) and connection errors raise.
    """
    messages = []
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), FETCH_CHUNK):
        messages += _fetch_chunk(account, unique[start : start + FETCH_CHUNK], skipped)
    return messages


def _fetch_chunk(account: Account, chunk: list[tuple[str, str]], skipped: list) -> list[FetchedMessage]:
    fields = {FieldPath(field=Message.get_field_by_fieldname(name)) for name in ITEM_FIELDS}
    try:
        answers = list(GetItem(account=account, chunk_size=FETCH_CHUNK).call(
            items=chunk, additional_fields=fields, shape=ID_ONLY))
        # One answer per item. An ErrorServerBusy in the k-th answer makes exchangelib's retry send the
        # request again after the first k-1 answers were yielded already: the last, complete attempt counts.
        answers = answers[-len(chunk):]
    except TRANSIENT:
        raise
    except (ResponseMessageError, MalformedResponseError, ValueError, TypeError, KeyError, AttributeError) as error:
        if len(chunk) == 1:
            skipped.append((chunk[0][0], "unreadable", type(error).__name__))
            return []
        return [message for one in chunk for message in _fetch_chunk(account, [one], skipped)]
    messages = []
    for (item_id, _changekey), answer in zip(chunk, answers):
        if isinstance(answer, ErrorItemNotFound):
            continue  # deleted or moved away between the sync and the fetch
        try:
            if isinstance(answer, Exception):
                raise answer
            messages.append(_to_message(answer))
        except TRANSIENT:
            raise
        except (ResponseMessageError, ValueError, TypeError, KeyError, AttributeError) as error:
            skipped.append((item_id, "unreadable", type(error).__name__))
    return messages


def _mailbox_text(mailbox) -> str:
    """``Name <address>`` as a header shows it, decoded; just the address when Exchange repeats it as the name."""
    if mailbox is None:
        return ""
    address, name = (mailbox.email_address or "").strip(), (mailbox.name or "").strip()
    if name.strip("'\"").casefold() in ("", address.casefold()):
        return address
    if _SPECIALS.search(name):
        name = '"' + email.utils.quote(name) + '"'
    return f"{name} <{address}>" if address else name


def _utc(value) -> datetime | None:
    # A plain UTC datetime: exchangelib's EWSDateTime/EWSTimeZone need not reach the database.
    return datetime.fromtimestamp(value.timestamp(), tz=dt_timezone.utc) if value else None


def _to_message(item) -> FetchedMessage:
    """An EWS item as a FetchedMessage; DateTimeSent is the Date header (the fingerprint's date), From the sender.

    Items without InternetMessageId (Exchange shows none when the header is
    missing or unusable) get the fallback identity from these fields
    (sync.identity). Meeting requests and reports lack some fields: read as empty.
    """
    author = getattr(item, "author", None) or getattr(item, "sender", None)
    return FetchedMessage(
        message_id=(getattr(item, "message_id", None) or "")[:998], subject=(item.subject or "")[:500],
        sender=_mailbox_text(author)[:500],
        to=", ".join(_mailbox_text(m) for m in getattr(item, "to_recipients", None) or [])[:2000],
        cc=", ".join(_mailbox_text(m) for m in getattr(item, "cc_recipients", None) or [])[:2000],
        sent_at=_utc(item.datetime_sent), received_at=_utc(item.datetime_received), size=int(item.size or 0),
        provider_id=str(item.id or "")[:512],
    )


# --- reading and writing an account's EWS settings --------------------------------------------------------------


def settings_from(connection: dict, address: str) -> EwsSettings:
    """From a migration's connection dict (ews_url, username, auth_type, ca_pem); NTLM unless settled otherwise."""
    return EwsSettings(url=connection["ews_url"], username=connection["username"], address=address,
                       auth_type=connection.get("auth_type") or "ntlm", ca_pem=connection.get("ca_pem", ""))


def settings_of(account) -> EwsSettings:
    return settings_from({"ews_url": account.ews_url, "username": account.username or account.address,
                          "auth_type": account.ews_auth_type, "ca_pem": account.tls_ca_pem}, account.address)


def apply_to_account(account, *, server: EwsSettings, password: str) -> None:
    """Set (not save) the connection fields of a MailAccount; the password encrypted."""
    from sync import crypto

    account.ews_url = server.url
    account.ews_auth_type = server.auth_type
    account.tls_ca_pem = server.ca_pem
    account.username = server.username
    account.secret_encrypted = crypto.encrypt_json({"password": password})
