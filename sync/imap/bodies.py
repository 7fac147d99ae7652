"""A stored message's full MIME source from its IMAP mailbox, for the message page (RFC 3501, RFC 9051).

The fast path is one session: LOGIN, EXAMINE (read-only: nothing gets the
\\Seen flag) the row's folder, UID FETCH BODY.PEEK[] of the row's UID,
LOGOUT. The UID is checked against the row's identity before it is trusted,
because a UID is only valid with its UIDVALIDITY: a folder recreated or
renumbered by the server, or the message moved or expunged by another client,
leaves that UID empty or holding another message. Then the message is looked
up by UID SEARCH HEADER Message-ID (SUBJECT when it has none) in its folder,
then in every other folder; each candidate is checked the same way.
"""

from sync import identity
from sync.errors import MailboxError
from sync.imap import client as imap
from sync.models import MailAccount, SyncedMessage
from sync.services import imap_settings_of, password_of

MAX_CANDIDATES = 20  # per folder: a SUBJECT search in a busy folder must not fetch hundreds of headers
_HEADER = "BODY.PEEK[HEADER]"


class MessageGone(Exception):
    """No folder of the mailbox holds this message any more."""


def fetch_source(account: MailAccount, message: SyncedMessage) -> bytes:
    """The message's RFC 5322 bytes. Raises MessageGone, or MailboxError (code) for the mailbox."""
    client = imap.open_mailbox(imap_settings_of(account), password_of(account))
    try:
        return _find(client, message)
    except (OSError, imap.IMAPClientError):
        raise MailboxError("protocol", permanent=False) from None
    finally:
        imap.close(client)


def _find(client, message: SyncedMessage) -> bytes:
    selected = bool(message.folder) and _examine(client, message.folder)
    if selected and message.provider_uid:
        answer = client.fetch([message.provider_uid], ["BODY.PEEK[]", "INTERNALDATE"]).get(message.provider_uid)
        raw = _part(answer, b"BODY[]")
        if raw is not None and holds(message, _header_block(raw), answer.get(b"INTERNALDATE")):
            return raw
    if selected:
        found = _search_selected(client, message)
        if found is not None:
            return found
    for folder in _folders(client):
        if folder != message.folder and _examine(client, folder):
            found = _search_selected(client, message)
            if found is not None:
                return found
    raise MessageGone()


def _examine(client, folder: str) -> bool:
    try:
        client.select_folder(folder, readonly=True)
        return True
    except imap.IMAPClientError:  # NO: the folder was deleted or renamed
        return False


def _folders(client) -> list[str]:
    names = []
    for flags, _delimiter, name in client.list_folders():
        if {bytes(flag).lower() for flag in flags} & {b"\\noselect", b"\\nonexistent"}:
            continue
        names.append(name.decode("utf-8", "replace") if isinstance(name, bytes) else name)
    return names


def _criteria(message: SyncedMessage) -> tuple[list, str | None]:
    message_id = identity.normalize_message_id(message.message_id)
    if message_id:
        criteria = ["HEADER", "Message-ID", message_id]
    elif message.subject:
        criteria = ["SUBJECT", message.subject]
    else:
        return [], None
    text = " ".join(str(c) for c in criteria)
    return criteria, (None if text.isascii() else "UTF-8")


def _search_selected(client, message: SyncedMessage) -> bytes | None:
    """The message's source if the selected folder holds it; one SEARCH, then FETCHes of candidates."""
    criteria, charset = _criteria(message)
    if not criteria:
        return None
    uids = sorted(client.search(criteria, charset=charset), reverse=True)[:MAX_CANDIDATES]
    if not uids:
        return None
    headers = client.fetch(uids, [_HEADER, "INTERNALDATE"])
    for uid in uids:
        answer = headers.get(uid)
        if answer is not None and holds(message, _part(answer, b"BODY[HEADER]"), answer.get(b"INTERNALDATE")):
            raw = _part(client.fetch([uid], ["BODY.PEEK[]"]).get(uid), b"BODY[]")
            if raw is not None:
                return raw
    return None


def _part(answer: dict | None, prefix: bytes) -> bytes | None:
    # NIL (None) when another client expunged the message between SEARCH and FETCH.
    if not answer:
        return None
    for key, value in answer.items():
        if isinstance(key, bytes) and key.startswith(prefix) and value is not None:
            return bytes(value)
    return None


def _header_block(raw: bytes) -> bytes:
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(separator)
        if end != -1:
            return raw[: end + len(separator)]
    return raw


def holds(message: SyncedMessage, header: bytes | None, internal_date) -> bool:
    """Whether the fetched header block is this row's message (sync.identity's rule).

    The Message-IDs must agree (both absent counts), and the fingerprints too
    in every field both have; a row stored before fingerprints existed gets
    one from its own columns.
    """
    if header is None:
        return False
    fetched = imap.parse_fetched(0, {b"BODY[HEADER]": header, b"INTERNALDATE": internal_date})
    if fetched is None:
        return False
    if identity.normalize_message_id(fetched.message_id) != identity.normalize_message_id(message.message_id):
        return False
    stored = message.fingerprint or identity.fingerprint(
        sent_at=message.sent_at, sender=message.sender, subject=message.subject)
    return identity.same_message(stored, fetched.fingerprint)
