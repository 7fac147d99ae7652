"""Errors every provider package raises, so the migration and the UI treat them alike."""


class MailboxError(Exception):
    """A mailbox could not be reached or read.

    code: auth_failed | unreachable | tls_failed | protocol (and the ews_ forms
    of sync.exchange.client.error_code); the UI translates it. permanent: True
    when trying again with the same settings cannot help.
    """

    def __init__(self, code: str, *, permanent: bool):
        super().__init__(code)
        self.code = code
        self.permanent = permanent
