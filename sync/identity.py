"""One message identity for every engine: V2, the V2 import, V3 IMAP, Graph and EWS.

The rule (the README repeats it for operators):

1. A message's key is its Message-ID (RFC 5322 section 3.6.4) without the angle
   brackets, when the header holds a usable one: ``id-left "@" id-right`` with
   no white space, no angle brackets and at most 250 characters. ``<>``, an
   empty header and values such as Outlook's ``<[...=@host]>`` are not usable.
2. Otherwise the key is ``"sha256:"`` + a SHA-256 of the message's fingerprint.
3. The fingerprint hashes, each on its own, fields every engine reads the same way: the Date
   header in UTC to the second (IMAP parses the header, Graph gives
   ``sentDateTime``, EWS ``DateTimeSent``), the sender's address in lower case,
   and the subject decoded, Unicode-normalised (NFKC), case-folded, with runs of
   white space collapsed. A message without a readable Date uses its delivery
   time instead (INTERNALDATE, ``receivedDateTime``, ``DateTimeReceived``),
   which IMAP COPY/MOVE (RFC 3501 section 6.4.7) and Exchange keep when a
   message is copied or moved, so its copies in two folders stay one row.
4. Two different messages that share a Message-ID (clients reuse ids): the
   first one stored keeps the bare key, another one whose fingerprint differs
   in a field both know gets ``<message-id>#<16 hex digits of its fingerprint's
   SHA-256>`` (sync.services.store_messages decides; the space keeps a
   crafted Message-ID from taking that key). A missing field (an
   export without the sender) differs from nothing. The same message in two
   folders has one key, so it stays one row.
"""

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone
from email.utils import getaddresses

MAX_MESSAGE_ID = 250
KEY_MAX_LENGTH = 300
FALLBACK_PREFIX = "sha256:"
COLLISION_SUFFIX_DIGITS = 16
COMPONENT_DIGITS = 16

# RFC 5322 id-left / id-right, loosely: dot-atom text (atext and dots) or a
# quoted local part on the left; dot-atom text or a domain literal on the right.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-\x80-\U0010ffff]+"
_ID_LEFT = rf'(?:{_ATEXT}|"[^"\s]*")'
_ID_RIGHT = rf"(?:{_ATEXT}|\[[^\[\]\s\\]*\])"
_MSG_ID = re.compile(rf"<?\s*({_ID_LEFT}@{_ID_RIGHT})\s*>?")
_WHITESPACE = re.compile(r"\s+")


def normalize_message_id(raw: str | None) -> str:
    """The usable Message-ID inside a header value, without brackets; "" if there is none.

    Takes the first ``<...>`` of the value (some clients append comments or a
    second id), strips CFWS around it and rejects what RFC 5322 does not
    allow. Case is kept: the left part is case-sensitive.
    """
    if not raw:
        return ""
    value = str(raw).strip()
    if "<" in value:
        start = value.index("<")
        end = value.find(">", start)
        value = value[start : end + 1] if end != -1 else value[start:]
    match = _MSG_ID.fullmatch(value)
    if match is None:
        return ""
    found = match.group(1)
    if len(found) > MAX_MESSAGE_ID or found.startswith("@") or found.endswith("@"):
        return ""
    return found


_ANGLE_ADDRESS = re.compile(r"<\s*([^<>\s]+@[^<>\s]+?)\s*>")


def normalize_address(raw: str | None) -> str:
    """The sender's address of a From/Sender value, lower-cased; "" if none.

    ``"Kunde <KUNDE@Example.org>"``, ``kunde@example.org`` and an EWS/Graph
    address field all give ``kunde@example.org``. The angle address wins: a
    decoded display name may hold commas, ``;`` or ``@`` ("Müller, Hans").
    """
    if not raw:
        return ""
    text = str(raw)
    angle = _ANGLE_ADDRESS.search(text)
    if angle:
        return angle.group(1).lower()
    for _name, address in getaddresses([text]):
        if "@" in address:
            return address.strip().lower()
    return ""


def normalize_subject(raw: str | None) -> str:
    """A decoded subject compared the way every engine can: NFKC, case-folded, spaces collapsed."""
    if not raw:
        return ""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", str(raw))).strip().casefold()


def utc_second(moment: datetime | None) -> str:
    """``2025-07-01T07:00:00Z`` (UTC, whole seconds); "" for None. Naive datetimes count as UTC."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt_timezone.utc)
    return moment.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def clean_text(value) -> str:
    """Text a database can store: no NUL, lone surrogates replaced by "?", None as ""."""
    if not value:
        return ""
    text = str(value).replace("\x00", "")
    if text.isascii():
        return text  # the common case: nothing to check (ASCII has no surrogates)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint(*, sent_at: datetime | None, sender: str, subject: str) -> str:
    """``"<date>.<sender>.<subject>"``: 16 hex digits of SHA-256 per normalised field, "-" for a missing one.

    Per field, so that a source that lacks a field (an export without the
    sender) still matches on the others (same_message).
    """
    parts = (utc_second(sent_at), normalize_address(sender), normalize_subject(subject))
    return ".".join(_digest(part)[:COMPONENT_DIGITS] if part else "-" for part in parts)


def same_message(first: str, second: str) -> bool:
    """Whether two fingerprints can belong to one message: every field both have agrees.

    An empty fingerprint (a row stored before fingerprints existed) matches anything.
    """
    if not first or not second:
        return True
    pairs = list(zip(first.split("."), second.split(".")))
    return all(a == b or "-" in (a, b) for a, b in pairs)


def message_key(*, message_id: str, fingerprint: str) -> str:
    """The row key of a message: its usable Message-ID, else "sha256:" + SHA-256 of the fingerprint."""
    normalized = normalize_message_id(message_id)
    return normalized if normalized else FALLBACK_PREFIX + _digest(fingerprint)


def legacy_key(*, received_at: datetime | None, sender: str, subject: str) -> str:
    """The key of a message without a usable Message-ID stored before dates were recorded (sync 0004).

    Such rows have no Date on record, only the delivery time; store_messages
    looks this key up for every message without a usable Message-ID, so they
    are recognised by sender, subject and delivery time (to the second).
    """
    text = "\n".join(("legacy", utc_second(received_at), normalize_address(sender), normalize_subject(subject)))
    return FALLBACK_PREFIX + _digest(text)


def collision_key(key: str, fingerprint: str) -> str:
    """The key of a second, different message that reuses an existing Message-ID."""
    return f"{key} #{_digest(fingerprint)[:COLLISION_SUFFIX_DIGITS]}"


@dataclass(frozen=True)
class FetchedMessage:
    """What an engine read about one message, before it is stored.

    Shapes: ``uid`` the IMAP UID (None elsewhere), ``provider_id`` Graph's
    immutable id or the EWS item id ("" for IMAP), header texts decoded to
    str, datetimes timezone-aware (``sent_at`` from the Date header,
    ``received_at`` the delivery time), ``size`` in bytes. ``dedup_key`` and
    ``fingerprint`` follow from the fields by the rule above.
    """

    message_id: str = ""
    subject: str = ""
    sender: str = ""
    to: str = ""
    cc: str = ""
    sent_at: datetime | None = None
    received_at: datetime | None = None
    size: int = 0
    uid: int | None = None
    provider_id: str = ""
    fingerprint: str = field(init=False)
    dedup_key: str = field(init=False)
    # The key this message has when a source lacks its Message-ID (an export, a provider that drops it).
    fallback_key: str = field(init=False)

    def __post_init__(self):
        # Provider JSON may carry NUL or lone surrogates ("\u0000", "\ud800"); PostgreSQL refuses both.
        for name in ("message_id", "subject", "sender", "to", "cc", "provider_id"):
            object.__setattr__(self, name, clean_text(getattr(self, name)))
        has_id = bool(normalize_message_id(self.message_id))
        # With a Message-ID an unreadable Date stays out of the fingerprint ("-" matches any date): another
        # engine's date for it (sentDateTime) would not match the delivery time and split one message in two.
        when = self.sent_at if has_id else (self.sent_at or self.received_at)
        digest = fingerprint(sent_at=when, sender=self.sender, subject=self.subject)
        object.__setattr__(self, "fingerprint", digest)
        object.__setattr__(self, "dedup_key", message_key(message_id=self.message_id, fingerprint=digest))
        object.__setattr__(self, "fallback_key", FALLBACK_PREFIX + _digest(digest))
