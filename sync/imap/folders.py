"""Which IMAP folders hold mail the CRM wants, found anew on every run.

RFC 6154 SPECIAL-USE flags say it where the server has them (\\Trash, \\Junk,
\\Drafts, \\All); many servers (older Dovecot and Courier setups, some hosters)
have none, so well-known names in German and English are the fallback. A folder
below a skipped one is skipped too (``Papierkorb/Alt``).
"""

import unicodedata

# RFC 3501 and RFC 6154 flags of folders that are not synced.
SKIPPED_FLAGS = {b"\\noselect", b"\\nonexistent", b"\\trash", b"\\junk", b"\\drafts", b"\\all"}
# Names (case-folded, NFC) of trash, junk/spam, drafts and outbox folders as
# servers and clients create them without SPECIAL-USE.
SKIPPED_NAMES = {
    # trash
    "trash", "deleted", "deleted items", "deleted messages", "bin", "papierkorb", "gelöschte elemente",
    "gelöschte objekte", "gelöscht", "gelöschte nachrichten",
    # junk / spam
    "junk", "junk e-mail", "junk email", "junk-e-mail", "junk mail", "spam", "bulk mail", "spamverdacht",
    "unerwünscht", "werbung",
    # drafts
    "drafts", "draft", "entwürfe", "entwurf",
    # outbox
    "outbox", "postausgang",
    # Gmail's virtual "All Mail" (every message again)
    "all mail", "alle nachrichten",
}


def _normal(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip().casefold()


def is_skipped(name: str, flags, delimiter: str | None) -> bool:
    """True for folders whose mail does not belong in the CRM (see the module docstring)."""
    if {bytes(flag).lower() if isinstance(flag, bytes) else str(flag).lower().encode() for flag in flags} & SKIPPED_FLAGS:
        return True
    parts = name.split(delimiter) if delimiter else [name]
    # "INBOX.Trash" (Courier-style namespaces) and "Papierkorb/Alt" are trash too.
    return any(_normal(part) in SKIPPED_NAMES for part in parts)


def syncable_folders(client) -> list[str]:
    """LIST every folder and keep the ones to sync, INBOX first. One round trip."""
    names = []
    for flags, delimiter, name in client.list_folders():
        if isinstance(delimiter, bytes):
            delimiter = delimiter.decode("ascii", "replace")
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if not is_skipped(name, flags, delimiter):
            names.append(name)
    return sorted(names, key=lambda folder: (folder.upper() != "INBOX", folder))
