"""Which IMAP folders hold mail the CRM wants, found anew on every run.

RFC 6154 SPECIAL-USE flags say it where the server has them (\\Trash, \\Junk,
\\Drafts, \\All); many servers (older Dovecot and Courier setups, some hosters)
have none, so well-known names in German and English are the fallback. Names
are matched only where mail clients create those folders, at the top level
and directly below INBOX ("Papierkorb", "INBOX.Trash"), never deeper: a
customer folder "Projekte/Entwurf" or "Kunden/Spam" is mail. Below a skipped
folder everything is skipped ("Papierkorb/Alt").
"""

import unicodedata

# RFC 3501 and RFC 6154 flags of folders that are not synced.
SKIPPED_FLAGS = {b"\\noselect", b"\\nonexistent", b"\\trash", b"\\junk", b"\\drafts", b"\\all"}
# Names (case-folded, NFC) of trash, junk/spam, drafts and outbox folders as
# servers and clients create them without SPECIAL-USE.
SKIPPED_NAMES = {
    # trash
    "trash", "deleted items", "deleted messages", "papierkorb", "gelöschte elemente", "gelöschte objekte",
    "gelöschte nachrichten",
    # junk / spam
    "junk", "junk e-mail", "junk email", "junk-e-mail", "junk mail", "spam", "bulk mail", "spamverdacht",
    "unerwünscht",
    # drafts
    "drafts", "entwürfe",
    # outbox
    "outbox", "postausgang",
    # Gmail's virtual "All Mail" (every message again)
    "all mail", "alle nachrichten",
}
# Longer names do not fit FolderState.name; such a folder is reported, not synced.
MAX_NAME_LENGTH = 500


def _normal(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip().casefold()


def _flags(flags) -> set[bytes]:
    return {bytes(flag).lower() if isinstance(flag, bytes) else str(flag).lower().encode() for flag in flags}


def _well_known_at(parts: list[str]) -> int | None:
    """The depth (1 or 2) at which a path names a well-known trash/junk/drafts/outbox folder, or None."""
    if parts and _normal(parts[0]) in SKIPPED_NAMES:
        return 1
    if len(parts) > 1 and _normal(parts[0]) == "inbox" and _normal(parts[1]) in SKIPPED_NAMES:
        return 2
    return None


def is_skipped(name: str, flags, delimiter: str | None, skipped_roots: set[str] = frozenset()) -> bool:
    """True for folders whose mail does not belong in the CRM (see the module docstring).

    skipped_roots: folders skipped by their flags; their subfolders are skipped too.
    """
    if _flags(flags) & SKIPPED_FLAGS:
        return True
    parts = name.split(delimiter) if delimiter else [name]
    if _well_known_at(parts) is not None:
        return True
    return any(delimiter and name.startswith(root + delimiter) for root in skipped_roots)


def syncable_folders(client) -> list[str]:
    """LIST every folder and keep the ones to sync, INBOX first. One round trip.

    Names longer than MAX_NAME_LENGTH are included: the engine reports them.
    """
    return syncable_of(client.list_folders())


def syncable_of(folders) -> list[str]:
    """The names to sync, INBOX first, of IMAPClient's LIST answer [(flags, delimiter, name)]."""
    listed = []
    for flags, delimiter, name in folders:
        if isinstance(delimiter, bytes):
            delimiter = delimiter.decode("ascii", "replace")
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        listed.append((flags, delimiter, name))
    # Below a folder flagged \\Trash or \\Junk (RFC 6154) everything is skipped, whatever its name.
    roots = {name for flags, _d, name in listed if _flags(flags) & (SKIPPED_FLAGS - {b"\\noselect", b"\\nonexistent"})}
    names = [name for flags, delimiter, name in listed if not is_skipped(name, flags, delimiter, roots)]
    return sorted(names, key=lambda folder: (folder.upper() != "INBOX", folder))
