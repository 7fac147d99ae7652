"""A whole RFC 5322 / MIME message (as IMAP's BODY[] returns it) read for display.

The stdlib email package (policy=default) splits the parts; everything it
could trip over is read tolerantly, part by part, so one broken part never
hides the rest:

- text: the first text/plain and the first text/html part that is not an
  attachment, decoded from its Content-Transfer-Encoding and its declared
  charset; an unknown or wrong charset falls back like header values do
  (sync.headers.to_text: UTF-8, the declared charset, windows-1252, Latin-1);
- attachments: every other leaf part that has a file name, is marked as an
  attachment, or is not text; an attached message (message/rfc822) is one
  attachment, its own parts are not looked into. Names are decoded (RFC 2231,
  RFC 2047, raw 8-bit bytes), sizes are decoded bytes. Content is never kept.

A text part that is UTF-16 (a byte order mark, or the NUL byte every other
byte of Latin text has in UTF-16) is read as UTF-16 whatever charset it names:
Outlook and scanners send such parts without one. Whatever is left that a
database cannot store (NUL, e.g. from a quoted-printable "=00"; lone
surrogates) is taken out of text, HTML and attachment names by clean().
"""

import email
import email.message
import email.policy
import logging
from dataclasses import dataclass, field

from sync import headers
from sync.identity import clean_text

logger = logging.getLogger(__name__)
MAX_DEPTH = 30  # nesting of multiparts; deeper parts are ignored (a mail bomb, not a letter)
MAX_NAME = 255
MAX_TYPE = 255
UTF16_NUL_SHARE = 0.6  # at least this share of NUL bytes on one side (odd or even offsets), none on the other


@dataclass
class Content:
    """What a message shows: text, HTML (NOT yet sanitized) and attachments [{name, content_type, size}]."""

    text: str = ""
    html: str = ""
    attachments: list[dict] = field(default_factory=list)


@dataclass
class Part:
    """One leaf part of a message read piece by piece (IMAP BODYSTRUCTURE): its MIME header block, its
    content as transferred when it was fetched (an attached message: its header), and its decoded size
    when the content is not all there (None: measured from the content)."""

    header: bytes
    body: bytes = b""
    size: int | None = None
    truncated: bool = False  # only the start of a text part was fetched


def shown_text(header: bytes) -> str:
    """"text/plain" or "text/html" when a part with this MIME header is shown as the message's text
    (the rule parse() follows: not an attachment, no file name), else ""."""
    try:
        part = email.message_from_bytes(header, policy=email.policy.default)
        content_type = part.get_content_type()
        if content_type in ("text/plain", "text/html") and not _filename(part) and (
                part.get_content_disposition() != "attachment"):
            return content_type
    except Exception:  # noqa: BLE001 - a header the parser cannot read: not shown as text
        pass
    return ""


def parse_parts(parts: list[Part], *, truncated_mark: str = "") -> Content:
    """Content from the leaf parts of a message read piece by piece, by the rules of parse() (cleaned).

    Attachments get the given size; a text part cut short ends with truncated_mark.
    """
    content = Content()
    for piece in parts:
        try:
            part = email.message_from_bytes(piece.header + piece.body, policy=email.policy.default)
            had = (content.text, content.html)
            _take(part, content, size=piece.size)
            if piece.truncated and truncated_mark:
                if content.text != had[0]:
                    content.text = content.text.rstrip() + "\n" + truncated_mark
                elif content.html != had[1]:
                    content.html += f"<p>{truncated_mark}</p>"
        except Exception as error:  # noqa: BLE001 - one unreadable part must not hide the others
            logger.info("Skipped an unreadable MIME part (%s)", type(error).__name__)
    return clean(content)


def parse(raw: bytes) -> Content:
    """MIME bytes -> Content (cleaned). Never raises for what a mailbox may hold."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    content = Content()
    for part in _leaves(message, 0):
        try:
            _take(part, content)
        except Exception as error:  # noqa: BLE001 - one unreadable part must not hide the others
            logger.info("Skipped an unreadable MIME part (%s)", type(error).__name__)
    return clean(content)


def clean(content: Content) -> Content:
    """Content a database can store, from any provider: no NUL and no lone surrogates (replaced by "?") in
    the text, the HTML, attachment names and types; sizes whole numbers >= 0."""
    attachments = []
    for attachment in content.attachments:
        size = attachment.get("size")
        attachments.append({
            "name": " ".join(clean_text(attachment.get("name")).split())[:MAX_NAME],
            "content_type": clean_text(attachment.get("content_type")).strip()[:MAX_TYPE],
            "size": size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0,
        })
    return Content(text=clean_text(content.text), html=clean_text(content.html), attachments=attachments)


def _leaves(part, depth: int):
    if depth > MAX_DEPTH:
        return
    if part.get_content_maintype() == "multipart":
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                yield from _leaves(sub, depth + 1)
        return
    yield part


def _take(part, content: Content, *, size: int | None = None) -> None:
    """Put a leaf part where it belongs; size: an attachment's size when the part's content is not at hand."""
    content_type = part.get_content_type()
    name = _filename(part)
    attached = name or part.get_content_disposition() == "attachment"
    if not attached and content_type == "text/plain" and not content.text:
        content.text = text_of(part).replace("\r\n", "\n")
    elif not attached and content_type == "text/html" and not content.html:
        content.html = text_of(part)
    elif attached or part.get_content_maintype() != "text":
        content.attachments.append({"name": name or _attached_message_name(part), "content_type": content_type,
                                    "size": _size(part) if size is None else size})
    # An inline text part after the first (a list footer, a signature part) is not an attachment.


def text_of(part) -> str:
    """A text part's content as str: UTF-16 when it is, else its declared charset, else the tolerant fallback chain."""
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or ""
    utf16 = _utf16(payload)
    if utf16 is not None:
        return utf16
    if charset:
        try:
            return payload.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    return headers.to_text(payload, charset)


def _utf16(payload: bytes) -> str | None:
    """The payload as UTF-16 if it carries a byte order mark or UTF-16's NUL pattern, else None."""
    if payload[:2] in (b"\xff\xfe", b"\xfe\xff"):
        encoding = "utf-16"  # the BOM says which order, and goes
    elif b"\x00" in payload and len(payload) >= 4:
        even, odd = payload[0::2], payload[1::2]
        if odd.count(0) >= UTF16_NUL_SHARE * len(odd) and not even.count(0):
            encoding = "utf-16-le"
        elif even.count(0) >= UTF16_NUL_SHARE * len(even) and not odd.count(0):
            encoding = "utf-16-be"
        else:
            return None
    else:
        return None
    try:
        return payload[: len(payload) - len(payload) % 2].decode(encoding)
    except UnicodeDecodeError:
        return None


def _filename(part) -> str:
    try:
        name = part.get_filename() or ""
    except Exception:  # noqa: BLE001 - a header the parser cannot read: the part stays, unnamed
        name = ""
    if "\ufffd" in name or any("\udc80" <= char <= "\udcff" for char in name):
        # Raw 8-bit bytes in the header (no RFC 2231/2047 encoding): the parser replaced
        # them; read the header's own bytes with the fallback chain instead.
        name = _filename_from_raw(part) or name
    if "=?" in name:  # an encoded word the parser left alone (inside quotes, broken folding)
        name = headers.decode_value(name.encode("utf-8", "surrogateescape"))
    return " ".join(name.replace("\x00", "").split())[:MAX_NAME]


def _filename_from_raw(part) -> str:
    for header in ("content-disposition", "content-type"):
        for key, value in part.raw_items():
            if key.lower() != header:
                continue
            legacy = email.message.Message()  # compat32 parses parameters of any str
            legacy[header] = headers.to_text(str(value).encode("utf-8", "surrogateescape"), part.get_content_charset() or "")
            name = legacy.get_filename() if header == "content-disposition" else legacy.get_param("name")
            if isinstance(name, str) and name:
                return name
    return ""


def _attached_message_name(part) -> str:
    if part.get_content_type() != "message/rfc822":
        return ""
    inner = part.get_payload()
    inner = inner[0] if isinstance(inner, list) and inner else None
    subject = str(inner.get("subject", "")) if inner is not None else ""
    return f"{' '.join(subject.split())[:MAX_NAME - 4]}.eml" if subject else ""


def _size(part) -> int:
    try:
        if part.get_content_maintype() == "message":
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                return len(inner[0].as_bytes())
            return len(str(inner or "").encode("utf-8", "surrogateescape"))
        return len(part.get_payload(decode=True) or b"")
    except Exception:  # noqa: BLE001 - a part the serializer cannot write back: listed without a size
        return 0
