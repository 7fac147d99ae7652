"""A stored message's body and attachment list from its IMAP mailbox, for the message page (RFC 3501, RFC 9051).

One session: LOGIN, EXAMINE (read-only: nothing gets the \\Seen flag) the row's
folder, UID FETCH of the row's UID with its header, INTERNALDATE and
RFC822.SIZE, LOGOUT. The UID is checked against the row's identity before it
is trusted, because a UID is only valid with its UIDVALIDITY: a folder
recreated or renumbered by the server, or the message moved or expunged by
another client, leaves that UID empty or holding another message. Then the
message is looked up by UID SEARCH HEADER Message-ID (SUBJECT when it has
none) in its folder, then in every other folder; each candidate is checked
the same way.

What is fetched depends on the size (the web process must not hold a 40 MB
attachment to show a page of text):

- up to WHOLE_MAX octets: BODY.PEEK[], parsed by sync.mime (exact sizes);
- bigger: BODYSTRUCTURE, then each leaf part's MIME header (BODY.PEEK[n.MIME];
  an attached message's own header too, for its name), then only the first
  text/plain and text/html part that is shown (BODY.PEEK[n], at most
  TEXT_MAX octets of each: a longer text is cut and ends with "[…]").
  Attachments are listed from their MIME headers, with the size the
  structure gives (Base64 counted back to decoded bytes); their content is
  never fetched. At most MAX_PARTS leaf parts are looked at. A structure the
  client library cannot read falls back to the message's first WHOLE_MAX
  octets.
"""

import math

from sync import identity, mime
from sync.errors import MailboxError
from sync.imap import client as imap
from sync.models import MailAccount, SyncedMessage
from sync.services import imap_settings_of, password_of

MAX_CANDIDATES = 20  # per folder: a SUBJECT search in a busy folder must not fetch hundreds of headers
WHOLE_MAX = 1_000_000  # octets (RFC822.SIZE) of a message fetched and parsed whole
TEXT_MAX = 1_000_000  # octets fetched of one text part of a bigger message
MAX_PARTS = 200  # leaf parts of a bigger message looked at
MAX_DEPTH = mime.MAX_DEPTH
TRUNCATED = "[…]"
_HEADER = "BODY.PEEK[HEADER]"
_CHECK = [_HEADER, "INTERNALDATE", "RFC822.SIZE"]


class MessageGone(Exception):
    """No folder of the mailbox holds this message any more."""


def fetch_content(account: MailAccount, message: SyncedMessage, *, access_token: str = "") -> mime.Content:
    """The message's text, HTML (not sanitized) and attachment list. Raises MessageGone, or MailboxError (code).

    access_token: log in with XOAUTH2 instead of the stored password (Google)."""
    password = "" if access_token else password_of(account)
    client = imap.open_mailbox(imap_settings_of(account), password, access_token=access_token)
    try:
        return _find(client, message)
    except (OSError, imap.IMAPClientError) as error:
        raise MailboxError(imap.error_code(error), permanent=False) from None
    finally:
        imap.close(client)


def _find(client, message: SyncedMessage) -> mime.Content:
    selected = bool(message.folder) and _examine(client, message.folder)
    if selected and message.provider_uid:
        uid = message.provider_uid
        answer = client.fetch([uid], _CHECK).get(uid)
        if answer and holds(message, _part(answer, b"BODY[HEADER]"), answer.get(b"INTERNALDATE")):
            content = _content(client, uid, answer)
            if content is not None:
                return content
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


def _search_selected(client, message: SyncedMessage) -> mime.Content | None:
    """The message's content if the selected folder holds it; one SEARCH, then FETCHes of candidates."""
    criteria, charset = _criteria(message)
    if not criteria:
        return None
    uids = sorted(client.search(criteria, charset=charset), reverse=True)[:MAX_CANDIDATES]
    if not uids:
        return None
    headers = client.fetch(uids, _CHECK)
    for uid in uids:
        answer = headers.get(uid)
        if answer is not None and holds(message, _part(answer, b"BODY[HEADER]"), answer.get(b"INTERNALDATE")):
            content = _content(client, uid, answer)
            if content is not None:
                return content
    return None


def _content(client, uid: int, checked: dict) -> mime.Content | None:
    """The content of the message `uid` whose header, date and size are in `checked`; None if it is gone."""
    size = checked.get(b"RFC822.SIZE")
    if isinstance(size, int) and size <= WHOLE_MAX:
        raw = _part(client.fetch([uid], ["BODY.PEEK[]"]).get(uid), b"BODY[]")
        return None if raw is None else mime.parse(raw)
    header = _part(checked, b"BODY[HEADER]") or b""
    try:
        answer = client.fetch([uid], ["BODYSTRUCTURE"]).get(uid) or {}
        structure = answer.get(b"BODYSTRUCTURE")
        if structure is None:
            return None  # expunged meanwhile
        single = not structure.is_multipart
        leaves = list(_leaves(structure, "", 0))[:MAX_PARTS]
    except (imap.IMAPClientError, ValueError, TypeError, IndexError, AttributeError):
        # A structure the client library cannot read: what the first WHOLE_MAX octets show.
        raw = _part(client.fetch([uid], [f"BODY.PEEK[]<0.{WHOLE_MAX}>"]).get(uid), b"BODY[]")
        return None if raw is None else mime.parse(raw)
    return _content_in_parts(client, uid, header, leaves, single=single)


def _leaves(body, section: str, depth: int):
    """(section, BODYSTRUCTURE of the part) of each leaf part, in order; an attached message is one leaf."""
    if depth > MAX_DEPTH:
        return
    if body.is_multipart:
        for number, child in enumerate(body[0], start=1):
            yield from _leaves(child, f"{section}.{number}" if section else str(number), depth + 1)
        return
    yield section or "1", body


def _is_message(body) -> bool:
    """An attached message (message/rfc822 or message/global): listed as one attachment, named by its subject."""
    try:
        return _text(body[0]).lower() == "message" and _text(body[1]).lower() in ("rfc822", "global")
    except (IndexError, TypeError):
        return False


def _content_in_parts(client, uid: int, header: bytes, leaves: list, *, single: bool) -> mime.Content | None:
    """Headers of every leaf, then only the text parts that are shown (see the module docstring).

    single: the message is one part ("1"); its MIME header is the message's header.
    """
    items = []
    for section, body in leaves:
        if not single:
            items.append(f"BODY.PEEK[{section}.MIME]")
        if _is_message(body):
            items.append(f"BODY.PEEK[{section}.HEADER]")
    answer = {}
    if items:
        answer = client.fetch([uid], items).get(uid)
        if not answer:
            return None  # expunged meanwhile
    parts, wanted = [], {}
    for section, body in leaves:
        part = mime.Part(header=_block(header if single else _exact(answer, f"BODY[{section}.MIME]") or b""),
                         size=_decoded_size(body))
        if _is_message(body):
            part.body = _exact(answer, f"BODY[{section}.HEADER]") or b""
        role = mime.shown_text(part.header)
        if role and role not in wanted.values():
            wanted[section] = role
        parts.append((section, body, part))
    if wanted:
        texts = client.fetch([uid], [f"BODY.PEEK[{section}]<0.{TEXT_MAX}>" for section in wanted]).get(uid) or {}
        for section, body, part in parts:
            if section in wanted:
                content = _exact(texts, f"BODY[{section}]") or b""
                cut = _octets(body) > TEXT_MAX if _octets(body) else len(content) >= TEXT_MAX
                if cut:
                    end = content.rfind(b"\n")
                    content = content[: end + 1] if end > 0 else content  # no half line of Base64 or QP
                part.body, part.size, part.truncated = content, None, cut
    return mime.parse_parts([part for _section, _body, part in parts], truncated_mark=TRUNCATED)


def _text(value) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")


def _octets(body) -> int:
    try:
        return int(body[6] or 0)
    except (IndexError, TypeError, ValueError):
        return 0


def _decoded_size(body) -> int:
    """The part's size in decoded bytes, from the octets BODYSTRUCTURE gives: Base64 lines of 76
    characters and a CRLF carry 57 bytes; other encodings are about their own size."""
    octets = _octets(body)
    try:
        encoding = _text(body[5]).lower()
    except (IndexError, TypeError):
        encoding = ""
    if encoding == "base64" and octets:
        return max(0, (octets - 2 * math.ceil(octets / 78)) * 3 // 4)
    return octets


def _block(header: bytes) -> bytes:
    """A header block ending in an empty line, so that a body can follow it."""
    if header.endswith((b"\r\n\r\n", b"\n\n")):
        return header
    return header.rstrip(b"\r\n") + b"\r\n\r\n"


def _exact(answer: dict | None, name: str) -> bytes | None:
    """The value of FETCH item `name` (b"BODY[2.MIME]"; a partial b"BODY[2]<0>" too), not of another section."""
    if not answer:
        return None
    wanted = name.encode()
    for key, value in answer.items():
        if isinstance(key, bytes) and (key == wanted or key.startswith(wanted + b"<")) and value is not None:
            return bytes(value)
    return None


def _part(answer: dict | None, prefix: bytes) -> bytes | None:
    # NIL (None) when another client expunged the message between SEARCH and FETCH.
    return _exact(answer, prefix.decode())


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
