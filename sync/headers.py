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
_CHARSET_PARAM = re.compile(rb"""charset\s*=\s*["']?([A-Za-z0-9_\-:.]+)""", re.I)


def split_fields(raw: bytes | None) -> dict[str, list[bytes]]:
    """Header block bytes -> {lower-cased field name: [unfolded raw values, in order]}.

    Lines without a colon (garbage, a body that leaked in) are skipped; a
    continuation line before any field is ignored. Never raises.
    """
    fields: dict[str, list[bytes]] = {}
    if not raw:
        return fields
    current: list | None = None
    for line in raw.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.strip():
            if not line:
                break  # the empty line that ends the header block
            continue
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current[1] += b" " + line.strip()
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name.strip() or b" " in name.strip():
            current = None
            continue
        current = [name.strip().decode("ascii", "replace").lower(), value.strip()]
        fields.setdefault(current[0], []).append(current)
    return {name: [entry[1] for entry in entries] for name, entries in fields.items()}


def charset_hint(fields: dict[str, list[bytes]]) -> str:
    """The charset the message's Content-Type names ("" if none): the best guess for raw 8-bit headers."""
    for value in fields.get("content-type", []):
        match = _CHARSET_PARAM.search(value)
        if match:
            return match.group(1).decode("ascii").lower()
    return ""


def to_text(raw: bytes, hint: str = "") -> str:
    """Bytes as text: UTF-8, the hinted charset, windows-1252, Latin-1 (which always works)."""
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
    cleaned = re.sub(r"\([^)]*\)", " ", value).strip()
    cleaned = re.sub(r"(\d{1,2}:\d{2}):60\b", r"\1:59", cleaned)
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
