"""The IMAP side of the built-in provider table (sync.provider_table): server settings for the form.

IMAP_PROVIDERS holds every provider with an IMAP login, Google's app-password
fallback included; Microsoft 365 has none (it syncs through Graph).
"""

import fnmatch

from sync.provider_table import APP_PASSWORD_HINT, MX_RULES, PROVIDERS, Provider

__all__ = ["APP_PASSWORD_HINT", "IMAP_PROVIDERS", "PROVIDER_HOSTS", "ImapProvider", "is_provider_host",
           "provider_for_address", "username_for"]

ImapProvider = Provider  # the name the rest of the code knows

IMAP_PROVIDERS: dict[str, Provider] = {p.key: p for p in PROVIDERS if p.kind in ("imap", "google")}

# The built-in providers' own servers: detection proposes them without asking,
# and the rate limit gives them no shared budget.
PROVIDER_HOSTS = frozenset({p.host for p in IMAP_PROVIDERS.values() if p.host}
                           | {rule.host for rule in MX_RULES if rule.host and rule.host != "{mx}"})
# Hosters whose IMAP server is the customer's MX host: any host of that pattern is theirs.
_PROVIDER_HOST_PATTERNS = tuple(rule.pattern for rule in MX_RULES if rule.host == "{mx}")


def is_provider_host(host: str) -> bool:
    """Whether host (lower case, no trailing dot) is a server of a provider in the table."""
    return host in PROVIDER_HOSTS or any(fnmatch.fnmatchcase(host, p) for p in _PROVIDER_HOST_PATTERNS)


def provider_for_address(address: str) -> Provider | None:
    domain = address.rsplit("@", 1)[-1].lower()
    return next((p for p in IMAP_PROVIDERS.values() if domain in p.domains), None)


def username_for(address: str, username_form: str) -> str:
    return address.split("@", 1)[0] if username_form == "localpart" else address
