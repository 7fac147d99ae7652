"""One IMAP session of a sync run that survives a message the server cannot deliver.

A corrupt message file (a full disk, a broken restore) makes Dovecot answer
the whole FETCH with an error and drop the connection; a message over
IMAP_MAX_MESSAGE_BYTES makes the client drop it (sync.imap.client.TooLarge).
One such message must not stop a mailbox: the batch is fetched again message by message on a new
connection, the bad ones are noted for the caller to record, and the rest is
stored. Used by the V3 engine and the legacy V2 poll.
"""

from sync.imap import client as imap
from sync.imap.client import ImapSettings

# More bad messages than this in one batch: the server is failing as a whole, not
# message by message; the run ends and the folder is tried again next run.
MAX_BAD_MESSAGES = 20


class Session:
    """An open, logged-in connection (self.client) that can be opened again. Raises MailboxError on login."""

    def __init__(self, settings: ImapSettings, password: str, *, access_token: str = ""):
        # access_token: XOAUTH2 instead of the password (Google); reused for a reopen within the run.
        self.settings, self.password, self.access_token = settings, password, access_token
        self.client = imap.open_mailbox(settings, password, access_token=access_token)

    def reopen(self, folder: str):
        """A new connection with `folder` selected read-only; the old one is closed."""
        imap.close(self.client)
        self.client = imap.open_mailbox(self.settings, self.password, access_token=self.access_token)
        self.client.select_folder(folder, readonly=True)
        return self.client

    def close(self) -> None:
        imap.close(self.client)

    def fetch_batches(self, folder: str, uids: list[int], *, skipped: list):
        """Yield lists of FetchedMessage for `uids` of the selected `folder`, FETCH_BATCH at a time.

        skipped: (uid, reason, detail) is appended for each message that could
        not be fetched or read. Raises OSError / IMAPClientError / MailboxError
        when more than MAX_BAD_MESSAGES of one batch fail.
        """
        for start in range(0, len(uids), imap.FETCH_BATCH):
            batch = uids[start : start + imap.FETCH_BATCH]
            try:
                yield from list(imap.fetch_batches(self.client, batch, skipped=skipped))
            except imap.TooSlow:
                raise  # the server is slow, not one message: asking message by message would only be slower
            except (OSError, imap.IMAPClientError):
                yield self._one_by_one(folder, batch, skipped)

    def _one_by_one(self, folder: str, uids: list[int], skipped: list) -> list:
        messages, bad = [], 0
        client = self.reopen(folder)
        for uid in uids:
            try:
                messages.extend(imap.fetch_messages(client, [uid], skipped=skipped))
            except imap.TooSlow:
                raise
            except (OSError, imap.IMAPClientError) as error:
                bad += 1
                if bad > MAX_BAD_MESSAGES:
                    raise
                if isinstance(error, imap.TooLarge):
                    # Bigger than IMAP_MAX_MESSAGE_BYTES (or announced so): never read, recorded for support.
                    skipped.append((uid, "too_large", str(error)[:300]))
                else:
                    skipped.append((uid, "unreadable", type(error).__name__))
                client = self.reopen(folder)
        return messages
