"""The IMAP provider flow: verify the credentials and read the cursors.

What the form proposes comes from migration.proposal."""

from sync import imap
from sync.imap import ImapSettings


def verify(server: ImapSettings, password: str) -> dict:
    """Log in, list the folders and return each folder's V3 cursor."""
    client = imap.open_mailbox(server, password)
    try:
        return {folder: imap.folder_cursor(client, folder) for folder in imap.syncable_folders(client)}
    except (OSError, imap.IMAPClientError):
        raise imap.MailboxError("protocol", permanent=False) from None
    finally:
        imap.close(client)
