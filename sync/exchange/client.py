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
"""

import email.utils
import ssl
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

import requests
from django.conf import settings
from exchangelib import BASIC, DELEGATE, NTLM, Account, Build, Configuration, Credentials, Version
from exchangelib.errors import (
    CASError, EWSError, ErrorAccessDenied, ErrorImpersonateUserDenied, ErrorInvalidSyncStateData, ErrorItemNotFound,
    ErrorNonExistentMailbox, ErrorTimeoutExpired, TransportError, UnauthorizedError,
)
from exchangelib.protocol import CachingProtocol, Protocol

from sync import egress
from sync.egress import EgressError, PinnedAdapter, resolve_checked
from sync.errors import MailboxError
from sync.identity import FetchedMessage

# FolderState.name -> EWS distinguished folder id. "INBOX" is the name V2
# used, so V2's high-water mark is found under the same row at the handoff.
EWS_FOLDERS = {"INBOX": "inbox", "Sent": "sentitems"}
ITEM_FIELDS = ("message_id", "subject", "sender", "to_recipients", "cc_recipients", "datetime_sent",
               "datetime_received", "size")
SYNC_PAGE = 512  # the most SyncFolderItems returns per call
FETCH_CHUNK = 100
READ_TIMEOUT = 60  # seconds for one EWS answer (a page of 512 changes can take a while)
AUTH_TYPES = {"ntlm": NTLM, "basic": BASIC}


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


class _GuardedProtocol(Protocol):
    def __init__(self, *, config, host: str, address: str, ca_pem: str):
        self._pin = {"host": host, "address": address, "ca_pem": ca_pem}
        super().__init__(config=config)
        self.TIMEOUT = (settings.MAIL_CONNECT_TIMEOUT, READ_TIMEOUT)

    def create_session(self):
        session = super().create_session()
        # No proxies, netrc or CA bundle from the environment (they would bypass the pin).
        session.trust_env = False
        # Same pool settings exchangelib uses (one connection, no urllib3 retries).
        session.mount(self.service_endpoint, PinnedAdapter(
            **self._pin, pool_block=True, pool_connections=1, pool_maxsize=1, max_retries=0,
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
    )
    protocol = _GuardedProtocol.__new__(_GuardedProtocol)  # not through CachingProtocol.__call__
    protocol.__init__(config=config, host=host, address=address, ca_pem=server.ca_pem)
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
    """Translate what exchangelib, requests and the guard raise into MailboxError codes."""
    try:
        yield
    except MailboxError:
        raise
    except EgressError as error:
        raise MailboxError(error.code, permanent=error.code == "tls_failed") from None
    except (UnauthorizedError, ErrorAccessDenied, ErrorNonExistentMailbox, ErrorImpersonateUserDenied):
        raise MailboxError("auth_failed", permanent=True) from None
    except (TransportError, EWSError, CASError, requests.RequestException, OSError) as error:
        if _caused_by_tls(error):
            raise MailboxError("tls_failed", permanent=True) from None
        if isinstance(error, (ErrorTimeoutExpired, requests.ConnectionError, requests.Timeout, OSError)):
            raise MailboxError("unreachable", permanent=False) from None
        raise MailboxError("protocol", permanent=False) from None


def _caused_by_tls(error: BaseException) -> bool:
    # exchangelib re-raises requests' SSLError as a TransportError inside the
    # except block, so the original stays reachable through __context__.
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, (ssl.SSLError, ssl.CertificateError, requests.exceptions.SSLError)):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def verify(server: EwsSettings, password: str, *, heartbeat=None) -> dict[str, dict]:
    """Log in, open each synced folder and return its V3 cursor (SyncFolderItems state).

    The state is taken by walking the folder once with ids only: Exchange has
    no "start from now", and ids cost little. Mail arriving after this point
    is what the first incremental sync sees; mail before it comes from V2 or
    from the overlap window at the first sync. A big mailbox takes a while:
    heartbeat() is called once per page so the caller can show it is alive.
    """
    with mailbox_errors(), open_account(server, password) as account:
        cursors = {}
        for name, distinguished in EWS_FOLDERS.items():
            _ids, state = _changes(_folder(account, distinguished), "", keep_ids=False, heartbeat=heartbeat)
            cursors[name] = {"ews_folder": distinguished, "ews_sync_state": state}
        return cursors


@dataclass
class FolderSync:
    messages: list[FetchedMessage]
    sync_state: str
    reset: bool  # the server refused the stored state; it was rebuilt and the window re-read


def sync_folder(account: Account, distinguished: str, *, sync_state: str, since: datetime | None,
                resync_since: datetime) -> FolderSync:
    """New mail of one folder since sync_state (plus, if given, everything since `since`).

    ErrorInvalidSyncStateData (states expire, servers get restored): start a
    fresh state and read mail since resync_since by date instead; the caller's
    dedup store drops what was imported already.
    """
    folder = _folder(account, distinguished)
    reset = False
    try:
        ids, new_state = _changes(folder, sync_state)
    except ErrorInvalidSyncStateData:
        reset = True
        # The new state first, then the window: mail arriving in between is in both, never in neither.
        _ignored, new_state = _changes(folder, "", keep_ids=False)
        ids, since = [], min(since, resync_since) if since else resync_since
    if since is not None:
        ids += [(item_id, changekey) for item_id, changekey in
                folder.filter(datetime_received__gte=since).values_list("id", "changekey")]
    return FolderSync(messages=_fetch(account, ids), sync_state=new_state, reset=reset)


def _folder(account: Account, distinguished: str):
    return {"inbox": lambda: account.inbox, "sentitems": lambda: account.sent}[distinguished]()


def _changes(folder, sync_state: str, *, keep_ids: bool = True,
             heartbeat=None) -> tuple[list[tuple[str, str]], str]:
    """Ids of items created since sync_state ("" = all), and the state after them.

    keep_ids=False only walks (verifying a mailbox of 100,000 items needs its
    final state, not 100,000 ids in memory).
    """
    # exchangelib falls back to the folder's remembered state when given none.
    folder.item_sync_state = sync_state or None
    created = []
    seen = 0
    for change, item in folder.sync_items(sync_state=sync_state or None, only_fields=[],
                                          max_changes_returned=SYNC_PAGE):
        seen += 1
        if heartbeat is not None and seen % SYNC_PAGE == 0:
            heartbeat()
        if keep_ids and change == "create":
            created.append((item.id, item.changekey))
    return created, folder.item_sync_state or sync_state


def _fetch(account: Account, ids: list[tuple[str, str]]) -> list[FetchedMessage]:
    # GetItem for the fields: FindItem and SyncFolderItems may not return
    # InternetMessageId and Sender (Microsoft's advice: sync ids, then GetItem).
    unique = list(dict.fromkeys(ids))
    messages = []
    for item in account.fetch(ids=unique, only_fields=list(ITEM_FIELDS), chunk_size=FETCH_CHUNK):
        if isinstance(item, ErrorItemNotFound):
            continue  # deleted between the sync and the fetch
        if isinstance(item, Exception):
            raise item
        messages.append(_to_message(item))
    return messages


def _mailbox_text(mailbox) -> str:
    return email.utils.formataddr((mailbox.name or "", mailbox.email_address or "")) if mailbox is not None else ""


def _utc(value) -> datetime | None:
    # A plain UTC datetime: exchangelib's EWSDateTime/EWSTimeZone need not reach the database.
    return datetime.fromtimestamp(value.timestamp(), tz=dt_timezone.utc) if value else None


def _to_message(item) -> FetchedMessage:
    """An EWS message as a FetchedMessage; DateTimeSent is the Date header (the fingerprint's date)."""
    return FetchedMessage(
        message_id=(item.message_id or "")[:998], subject=(item.subject or "")[:500],
        sender=_mailbox_text(item.sender)[:500],
        to=", ".join(_mailbox_text(m) for m in item.to_recipients or [])[:2000],
        cc=", ".join(_mailbox_text(m) for m in item.cc_recipients or [])[:2000],
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
