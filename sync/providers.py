"""Built-in table of IMAP providers: server settings and hints for the form."""

from dataclasses import dataclass, field

from django.utils.translation import gettext_lazy as _


@dataclass(frozen=True)
class ImapProvider:
    key: str
    label: str
    host: str
    port: int = 993
    security: str = "ssl"
    # "address": log in with the full address; "localpart": with the part before @.
    username_form: str = "address"
    domains: tuple[str, ...] = ()
    hints: tuple = field(default_factory=tuple)


IMAP_PROVIDERS: dict[str, ImapProvider] = {
    provider.key: provider
    for provider in (
        ImapProvider(
            "ionos", "IONOS", "imap.ionos.de", domains=("ionos.de", "online.de"),
            hints=(_("Bei IONOS kann das Postfach auch über Microsoft laufen (Microsoft Exchange bei IONOS)."),),
        ),
        ImapProvider(
            "gmx", "GMX", "imap.gmx.net", domains=("gmx.de", "gmx.net", "gmx.at", "gmx.ch"),
            hints=(_("IMAP muss in den GMX-Einstellungen unter „POP3/IMAP Abruf“ aktiviert sein."),),
        ),
        ImapProvider(
            "webde", "WEB.DE", "imap.web.de", username_form="localpart", domains=("web.de",),
            hints=(
                _("IMAP muss in den WEB.DE-Einstellungen unter „POP3/IMAP Abruf“ aktiviert sein."),
                _("WEB.DE meldet Sie mit dem Teil vor dem @ an."),
            ),
        ),
        ImapProvider(
            "tonline", "T-Online", "secureimap.t-online.de", domains=("t-online.de", "magenta.de"),
            hints=(_("T-Online braucht das separate E-Mail-Passwort aus dem Kundencenter, nicht das Login-Passwort."),),
        ),
        ImapProvider("strato", "Strato", "imap.strato.de", domains=("strato.de",)),
    )
}

# The built-in providers' own servers: detection proposes them without asking,
# and the rate limit gives them no shared budget.
PROVIDER_HOSTS = frozenset(provider.host for provider in IMAP_PROVIDERS.values())

APP_PASSWORD_HINT = _("Ist die Zwei-Faktor-Anmeldung aktiv, verwenden Sie ein App-Passwort.")


def provider_for_address(address: str) -> ImapProvider | None:
    domain = address.rsplit("@", 1)[-1].lower()
    for provider in IMAP_PROVIDERS.values():
        if domain in provider.domains:
            return provider
    return None


def username_for(address: str, username_form: str) -> str:
    return address.split("@", 1)[0] if username_form == "localpart" else address
