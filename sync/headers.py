"""A tolerant reader of RFC 5322 header blocks, as the IMAP engines fetch them.

Why not email.parser with email.policy.default: its strict header classes
raise on values real mail carries (``Message-ID: <>``, Outlook's
``<[...=@host]>``) and on broken encoded words, and they replace 8-bit bytes
with U+FFFD. Here every field is unfolded from the raw bytes and decoded on
its own:

- raw 8-bit bytes: UTF-8 first, then the charset the Content-Type names, then
  windows-1252 (a superset of ISO-8859-1 for printable text), then Latin-1,
  which cannot fail; so a guessable legacy charset never turns into U+FFFD;
- RFC 2047 encoded words (``=?charset?B|Q?...?=``), with white space between
  two adjacent encoded words dropped (RFC 2047 section 6.2) and an unknown
  charset or broken Base64 decoded by the same fallback chain;
- dates by RFC 5322 section 3.3 including its obsolete forms (no weekday, one
  digit days, zone comments, two-digit years); an unreadable or absurd date is
  None, never an exception.
"""

import base64
import binascii
import quopri
import re
from datetime import datetime, timedelta, timezone as dt_timezone
from email.utils import parsedate_tz

LEGACY_FALLBACK = "windows-1252"
EARLIEST_YEAR = 1970
LATEST_YEAR = 2200

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"\?=[ \t\r\n]+=\?")
_FOLD = re.compile(rb"\n[ \t]+")
_ZONE_COMMENT = re.compile(r"\([^)]*\)")
_LEAP_SECOND = re.compile(r"(\d{1,2}:\d{2}):60\b")
_CHARSET_PARAM = re.compile(rb"""charset\s*=\s*["']?([A-Za-z0-9_\-:.]+)""", re.I)


def split_fields(raw: bytes | None) -> dict[str, list[bytes]]:
    """Header block bytes -> {lower-cased field name: [unfolded raw values, in order]}.

    Lines without a colon (garbage, a body that leaked in) are skipped, and so
    are their continuation lines; a continuation line before any field is
    ignored. Never raises. Folded values are joined with one space (the
    decoders collapse white space anyway).
    """
    fields: dict[str, list[bytes]] = {}
    if not raw:
        return fields
    block = raw.replace(b"\r\n", b"\n")
    if block[:1] == b"\n":
        return fields  # an empty header block
    end = block.find(b"\n\n")  # the empty line that ends the header block
    if end != -1:
        block = block[:end]
    # One pass of C-level work per block instead of Python work per line: unfold (RFC 5322 section
    # 2.2.3) with one regex, then split once per field. A block that starts with a continuation
    # line keeps its leading white space and is skipped below, as before.
    for line in _FOLD.sub(b" ", block).split(b"\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip()
        if not name or b" " in name or name[:1] != line[:1]:
            continue
        key = name.decode("ascii", "replace").lower()
        entry = fields.get(key)
        if entry is None:
            fields[key] = [value.strip()]
        else:
            entry.append(value.strip())
    return fields


def charset_hint(fields: dict[str, list[bytes]]) -> str:
    """The charset the message's Content-Type names ("" if none): the best guess for raw 8-bit headers."""
    for value in fields.get("content-type", []):
        match = _CHARSET_PARAM.search(value)
        if match:
            return match.group(1).decode("ascii").lower()
    return ""


def to_text(raw: bytes, hint: str = "") -> str:
    """Bytes as text: UTF-8, the hinted charset, windows-1252, Latin-1 (which always works)."""
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    for charset in (hint, LEGACY_FALLBACK):
        if not charset or charset in ("utf-8", "utf8", "us-ascii"):
            continue
        try:
            return raw.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return raw.decode("latin-1")


def _decode_word(match: re.Match, hint: str) -> str:
    charset, encoding, payload = match.group(1), match.group(2).upper(), match.group(3)
    charset = charset.split(b"*", 1)[0].decode("ascii", "replace")  # RFC 2231 language tag
    try:
        if encoding == b"B":
            data = base64.b64decode(payload + b"=" * (-len(payload) % 4), validate=True)
        else:
            data = quopri.decodestring(payload.replace(b"_", b" "), header=True)
    except (binascii.Error, ValueError):
        return to_text(match.group(0), hint)  # leave a broken word as it was written
    try:
        return data.decode(charset)
    except (LookupError, UnicodeDecodeError):
        return to_text(data, hint)


def decode_value(raw: bytes | None, hint: str = "") -> str:
    """One header value as readable text (RFC 2047 words decoded, 8-bit bytes guessed), spaces collapsed."""
    if not raw:
        return ""
    if b"=?" not in raw:
        # Fast path (most values): no encoded word, so no regex passes. Initial sync reads ~6 values
        # per message; this path keeps the header parsing well under the cost of the FETCH itself.
        return " ".join(to_text(raw, hint).replace("\x00", "").split())
    raw = _BETWEEN_WORDS.sub(b"?==?", raw)
    pieces, position = [], 0
    for match in _ENCODED_WORD.finditer(raw):
        pieces.append(to_text(raw[position : match.start()], hint))
        pieces.append(_decode_word(match, hint))
        position = match.end()
    pieces.append(to_text(raw[position:], hint))
    return " ".join("".join(pieces).replace("\x00", "").split())


def parse_date(value: str | None) -> datetime | None:
    """An RFC 5322 date (obsolete forms included) as an aware UTC datetime; None when unreadable or absurd."""
    if not value:
        return None
    # Zone comments such as "(CEST)" carry nothing the numeric offset does not; a leap second
    # (RFC 5322 allows second 60) counts as 59, as Exchange and most clients store it.
    cleaned = _ZONE_COMMENT.sub(" ", value).strip() if "(" in value else value.strip()
    if ":60" in cleaned:
        cleaned = _LEAP_SECOND.sub(r"\1:59", cleaned)
    try:
        parts = parsedate_tz(cleaned)
    except (TypeError, ValueError, IndexError):
        return None
    if parts is None:
        return None
    year = parts[0]
    if not EARLIEST_YEAR <= year <= LATEST_YEAR:
        return None
    try:
        moment = datetime(*parts[:6], tzinfo=dt_timezone.utc)
    except (ValueError, OverflowError):
        return None
    offset = parts[9] or 0
    if abs(offset) > 24 * 3600:
        offset = 0
    return moment - timedelta(seconds=offset)
