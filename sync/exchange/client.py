"""Exchange on-premises over EWS (exchangelib): verify a mailbox, walk its folders' changes, read messages.

The connection itself (the egress guard, the bounded retry, the caps, what
errors mean) is sync.exchange.connection; its public names are re-exported
here for the callers that know this module.
"""

import email.utils
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from exchangelib import Account
from exchangelib.errors import (
    ErrorInvalidSyncStateData, ErrorItemNotFound, MalformedResponseError, ResponseMessageError,
)
from exchangelib.fields import FieldPath
from exchangelib.items import ID_ONLY, Message
from exchangelib.properties import FolderId
from exchangelib.services import GetItem, SyncFolderItems
from exchangelib.services.sync_folder_hierarchy import SyncFolder
from exchangelib.util import MNS

from sync import egress
from sync.certificates import certificates_only
from sync.errors import MailboxError  # noqa: F401 - re-exported
from sync.exchange.connection import (  # noqa: F401 - re-exported
    AUTH_TYPES, MAILBOX_DENIED, READ_TIMEOUT, TRANSIENT, EwsSettings, PasswordRefused, error_code, mailbox_errors,
    open_account,
)
from sync.exchange.folders import mail_folders
from sync.identity import FetchedMessage

# What GetItem reads per message (Message fields in exchangelib's names): "author" is From, the
# identity's sender; "sender" (the Sender header) stands in when a message has no From.
ITEM_FIELDS = ("message_id", "subject", "author", "sender", "to_recipients", "cc_recipients", "datetime_sent",
               "datetime_received", "size")
SYNC_PAGE = 512  # the most SyncFolderItems returns per call
FETCH_CHUNK = 100
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')  # RFC 5322 specials: such a display name is quoted


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
    # The forms already refused keys; stored is only what parses as certificates, whoever called.
    account.tls_ca_pem = certificates_only(server.ca_pem)
    account.username = server.username
    account.secret_encrypted = crypto.encrypt_json({"password": password})
    account.push_error = ""  # new settings: the push listener tries notifications again
