"""What the login mask proposes: the provider step and its pre-filled settings.

The worker's detecting step calls initial(); the provider picker calls
for_choice(). The result is stored in Migration.detected (JSON):

    provider, label, candidates, source   what detection found (candidates > 1: the user chooses)
    chosen                                the key the user picked in the mask, if any
    host, port, security, username        the IMAP step's pre-fill
    ews_url, username                     the Exchange step's pre-fill
    server                                detection's own server proposal
    confirm_host                          a proposed server outside the user's domain: ask first
    hints                                 German source texts; the page translates them
    help_url                              the provider's help page the hints refer to (app passwords, ...)
"""

from django.utils import translation

from migration import detection
from migration.exchange import online
from sync import egress
from sync.google import oauth as google_oauth
from sync.models import MailAccount, ProviderKind
from sync.providers import APP_PASSWORD_HINT, IMAP_PROVIDERS, username_for

MICROSOFT_KEYS = {"microsoft365"}


def initial(account: MailAccount) -> tuple[str, dict]:
    """(provider kind, detected) for a new migration of the account; runs detection."""
    result = detection.detect(account.address)
    facts = {"provider": result.provider, "label": str(detection.LABELS.get(result.provider, "")),
             "candidates": result.candidates, "source": result.source, "server": result.server or {}}
    if account.provider_kind == ProviderKind.MICROSOFT:
        # V2 knew the account as Microsoft: that is a fact, not a guess from the domain.
        return ProviderKind.MICROSOFT, {**facts, "provider": "microsoft365",
                                        "label": str(detection.LABELS["microsoft365"])}
    if account.provider_kind == ProviderKind.EXCHANGE and _exchange_online(account.ews_url):
        # V2 reached this mailbox over EWS at Exchange Online, which Microsoft is switching off.
        return ProviderKind.MICROSOFT, {**facts, "provider": "microsoft365", "exchange_online": True,
                                        "label": str(detection.LABELS["microsoft365"])}
    if account.provider_kind == ProviderKind.EXCHANGE:
        return ProviderKind.EXCHANGE, _exchange(account, facts)
    if result.ambiguous:
        # IONOS: the same MX serves IMAP and Microsoft mailboxes; the user decides.
        return ProviderKind.IMAP, _imap(account, result.provider, facts)
    if result.provider in MICROSOFT_KEYS:
        # Microsoft 365 turned off password sign-in for IMAP: V3 goes through Graph. Found by
        # Autodiscover, it is Exchange Online, whose EWS is being switched off: the page says why.
        return ProviderKind.MICROSOFT, {**facts, "exchange_online": result.source == "autodiscover"}
    if result.provider == "google" and google_oauth.configured():
        # Google refuses account passwords over IMAP: Sign in with Google (IMAP with XOAUTH2). Without
        # an OAuth client the IMAP form below stays, for an app password.
        return ProviderKind.GOOGLE, {**facts, "chosen": "google_signin"}
    if result.provider == "exchange" and not account.imap_host:
        return ProviderKind.EXCHANGE, _exchange(account, facts)
    # The provider V2 knew the account by beats a guess from the domain.
    key = account.provider_name if account.provider_name in IMAP_PROVIDERS else result.provider
    return ProviderKind.IMAP, _imap(account, key, facts)


def for_choice(account: MailAccount, detected: dict, key: str, kind: str) -> dict:
    """detected after the user picked provider `key` of `kind` in the mask."""
    facts = {**detected, "chosen": key}
    if kind in (ProviderKind.MICROSOFT, ProviderKind.GOOGLE):
        return facts
    if kind == ProviderKind.EXCHANGE:
        return _exchange(account, facts)
    return _imap(account, key, facts)


def _imap(account: MailAccount, key: str, facts: dict) -> dict:
    provider = IMAP_PROVIDERS.get(key)
    server = facts.get("server") or {}
    detected_here = key in (facts.get("provider"), account.provider_name, "imap_other", "unknown")
    if account.imap_host and (detected_here or (provider and provider.host == account.imap_host)):
        # The server V2 already reaches with these credentials: the best guess, and no stranger.
        fill = {"host": account.imap_host, "port": account.imap_port or 993,
                "security": account.imap_security or "ssl", "username": account.username or account.address,
                "confirm_host": ""}
    elif key == facts.get("provider") and server.get("protocol") == "imap":
        # Detection's own server first: an MX rule may name a more specific host than the provider's
        # default (Zoho's imappro.* for organisations, ALL-INKL's per-customer w0….kasserver.com).
        fill = {"host": server["host"], "port": server["port"], "security": server["security"],
                "username": server.get("username") or account.address,
                "confirm_host": _stranger(account, server["host"])}
    elif provider:
        fill = {"host": provider.host, "port": provider.port, "security": provider.security,
                "username": username_for(account.address, provider.username_form), "confirm_host": ""}
    else:
        fill = {"host": "", "port": 993, "security": "ssl", "username": account.address, "confirm_host": ""}
    hints = [*(provider.hints if provider else ()), APP_PASSWORD_HINT]
    # An ambiguous detection (IONOS) explains all its candidates; a provider picked from the full
    # list instead gets its own hints, not those of what detection guessed.
    among_candidates = len(facts.get("candidates") or []) > 1 and key in facts["candidates"]
    if among_candidates:
        hints = [hint for key in facts["candidates"] if key in IMAP_PROVIDERS
                 for hint in IMAP_PROVIDERS[key].hints] + [APP_PASSWORD_HINT]
    label = provider.label if provider else str(detection.LABELS.get("imap_other"))
    keys = facts.get("candidates") if among_candidates else [key]
    help_url = next((IMAP_PROVIDERS[k].help_url for k in keys if k in IMAP_PROVIDERS and IMAP_PROVIDERS[k].help_url),
                    "")
    return {**facts, **fill, "label": label, "hints": _msgids(dict.fromkeys(hints)), "help_url": help_url}


def _exchange(account: MailAccount, facts: dict) -> dict:
    server = facts.get("server") or {}
    proposed = server.get("url", "") if server.get("protocol") == "ews" else ""
    if account.ews_url:
        ews_url, confirm = account.ews_url, ""
    else:
        ews_url, confirm = proposed, _stranger(account, server["host"]) if proposed else ""
    username = account.username if account.ews_url and account.username else account.address
    return {**facts, "ews_url": ews_url, "username": username, "confirm_host": confirm,
            "label": str(detection.LABELS["exchange"]), "hints": []}


def _exchange_online(ews_url: str) -> bool:
    try:
        return online.is_exchange_online(egress.split_url(ews_url)[1]) if ews_url else False
    except egress.EgressRefused:
        return False


def _stranger(account: MailAccount, host: str) -> str:
    """The host, if it is a detected server outside the user's own domain (else "")."""
    domain = account.address.rsplit("@", 1)[-1].lower()
    return host if detection.host_needs_confirmation(domain, host) else ""


def _msgids(hints) -> list[str]:
    # The German source text is the message id: stored as such, translated per reader.
    with translation.override("de"):
        return [str(hint) for hint in hints]
