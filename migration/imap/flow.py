"""The IMAP provider flow: verify the credentials and read the cursors.

What the form proposes comes from migration.proposal."""

from sync.imap import client as imap
from sync.imap import status as imap_status
from sync.imap.client import ImapSettings


def verify(server: ImapSettings, password: str, *, heartbeat=None, access_token: str = "") -> dict:
    """Log in, list the folders and return each folder's V3 cursor (sync.imap.status; heartbeat() once).

    A folder the server will not report on, or whose name is too long to keep,
    is left out rather than failing the migration: the sync records it for
    support on its first run. access_token: XOAUTH2 instead of the password (Google).
    """
    client = imap.open_mailbox(server, password, access_token=access_token)  # XOAUTH2 with a token (Google)
    try:
        cursors, _problems = imap_status.syncable_cursors(client)  # one or two round trips for all folders
        if heartbeat is not None:
            heartbeat()
        return cursors
    except (OSError, imap.IMAPClientError) as error:
        raise imap.MailboxError(imap.error_code(error), permanent=False) from None
    finally:
        imap.close(client)
