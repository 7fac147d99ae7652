"""IMAP NOTIFY (RFC 5465) for the IDLE listener: one connection hears of new mail in every synced folder.

IDLE alone (RFC 2177) announces new mail only in the selected INBOX; mail a
server-side filter (Sieve) files into "Kunden" would wait for the next poll.
Where the server offers NOTIFY (Dovecot 2.3 does), the connection asks, before
each IDLE:

    NOTIFY SET (selected (MessageNew MessageExpunge))
               (mailboxes ("Kunden" "Sent") (MessageNew MessageExpunge))

and the server then sends an untagged STATUS for a watched folder that changed
(RFC 5465 section 5.2; MessageExpunge is asked too because MessageNew may not be
asked without it). The folders are exactly those the sync reads
(sync.imap.folders.syncable_folders: no Trash, Junk, Drafts; a client saving a
draft every few seconds must not queue a sync each time). The list is read
again at every re-IDLE, so a new folder is watched within IMAP_IDLE_SECONDS.

A STATUS is never trusted as content either: it queues the account's ordinary
sync run, and only when the folder's UIDNEXT grew (or is not known yet), so
an expunge alone queues nothing. A server without NOTIFY, or one that answers
the NOTIFY with NO/BAD (RFC 5465: [BADEVENT], [NOTIFICATIONOVERFLOW]), keeps
the plain INBOX IDLE.
"""

import imaplib
import logging
import re

from sync.imap.folders import syncable_folders

logger = logging.getLogger(__name__)

# imaplib refuses commands it does not know; NOTIFY is valid once authenticated (RFC 5465 section 3).
imaplib.Commands.setdefault("NOTIFY", ("AUTH", "SELECTED"))
EVENTS = "(MessageNew MessageExpunge)"
_UIDNEXT = re.compile(rb"\bUIDNEXT (\d+)", re.IGNORECASE)


def watch_folders(client) -> list[str] | None:
    """Send NOTIFY SET for the selected INBOX and every other synced folder; returns the other folders
    watched, or None when the server has no NOTIFY or refused the command (plain IDLE then).

    Raises what imaplib raises when the connection breaks (the caller reconnects).
    """
    if not client.has_capability("NOTIFY"):
        return None
    others = [name for name in syncable_folders(client) if name.upper() != "INBOX"]
    groups = [f"(selected {EVENTS})"]
    if others:
        names = b" ".join(client._normalise_folder(name) for name in others).decode("ascii")
        groups.append(f"(mailboxes ({names}) {EVENTS})")
    try:
        typ, data = client._imap._simple_command("NOTIFY", "SET", *groups)
    except imaplib.IMAP4.error as error:  # a BAD answer; the connection itself is fine
        logger.info("IMAP NOTIFY refused (%s); IDLE on the INBOX only", str(error)[:200])
        return None
    if typ != "OK":
        logger.info("IMAP NOTIFY answered %s (%s); IDLE on the INBOX only", typ, (data or [b""])[0][:200])
        return None
    return others


class NewMail:
    """Whether an untagged STATUS (RFC 5465) announces new mail: its folder's UIDNEXT grew or is new to us."""

    def __init__(self):
        self.uidnext: dict[bytes, int] = {}

    def announced(self, response: tuple) -> bool:
        """response: sync.imap.idle_wait.untagged's split, e.g. (b"STATUS", b"Kunden", b"(MESSAGES 3 UIDNEXT 9)")."""
        if len(response) < 3 or response[0].upper() != b"STATUS":
            return False
        found = _UIDNEXT.search(response[2])
        if found is None:
            return True  # no UIDNEXT in it: the sync run decides
        # A quoted name with spaces is split further by untagged: everything before the last "(" is the name.
        name = (response[1] + b" " + response[2]).rsplit(b"(", 1)[0].strip()
        uidnext, before = int(found.group(1)), self.uidnext.get(name)
        self.uidnext[name] = uidnext
        return before is None or uidnext > before
