"""The IMAP provider flow: propose server settings, then verify and read cursors."""

from sync import imap
from sync.imap import ImapSettings
from sync.models import MailAccount
from sync.providers import APP_PASSWORD_HINT, IMAP_PROVIDERS, provider_for_address


def detect(account: MailAccount) -> dict:
    """Server settings to pre-fill: the V2 account's own, else the provider table."""
    provider = IMAP_PROVIDERS.get(account.provider_name) or provider_for_address(account.address)
    hints = [str(hint) for hint in (provider.hints if provider else ())] + [str(APP_PASSWORD_HINT)]
    if account.imap_host:
        return {
            "provider": provider.key if provider else "other", "label": provider.label if provider else "",
            "host": account.imap_host, "port": account.imap_port or 993, "security": account.imap_security or "ssl",
            "username": account.username or account.address, "hints": hints,
        }
    if provider:
        return {
            "provider": provider.key, "label": provider.label, "host": provider.host, "port": provider.port,
            "security": provider.security,
            "username": account.address.split("@", 1)[0] if provider.username_form == "localpart" else account.address,
            "hints": hints,
        }
    return {"provider": "other", "label": "", "host": "", "port": 993, "security": "ssl",
            "username": account.address, "hints": hints}


def verify(server: ImapSettings, password: str) -> dict:
    """Log in, list the folders and return each folder's V3 cursor."""
    client = imap.open_mailbox(server, password)
    try:
        return {folder: imap.folder_cursor(client, folder) for folder in imap.syncable_folders(client)}
    except (OSError, imap.IMAPClientError):
        raise imap.MailboxError("protocol", permanent=False) from None
    finally:
        imap.close(client)
