"""User-facing texts for error codes; codes are what the database stores."""

from django.utils.translation import gettext_lazy as _

from migration.google.errors import MESSAGES as GOOGLE_MESSAGES
from migration.microsoft.errors import MESSAGES as MICROSOFT_MESSAGES

MESSAGES = {
    "auth_failed": _(
        "Die Anmeldung wurde abgelehnt. Bitte prüfen Sie E-Mail-Adresse, Benutzername und Passwort "
        "(bei aktiver Zwei-Faktor-Anmeldung ein App-Passwort)."
    ),
    "unreachable": _(
        "Der E-Mail-Server war nicht erreichbar: Der Servername ist unbekannt, der Server antwortete nicht "
        "rechtzeitig (Zeitüberschreitung), oder das Portal darf diese Adresse nicht erreichen (etwa eine Adresse im internen Firmennetz). Bitte prüfen "
        "Sie die Servereinstellungen."
    ),
    "tls_failed": _(
        "Es konnte keine sichere Verbindung (TLS) aufgebaut werden. Bitte prüfen Sie unter „Servereinstellungen“ "
        "Port und Verschlüsselung: 993 mit SSL/TLS oder 143 mit STARTTLS."
    ),
    "ews_auth_failed": _(
        "Exchange hat die Anmeldung abgelehnt. Bitte prüfen Sie den Benutzernamen (DOMÄNE\\benutzer oder "
        "benutzer@firma.de) und das Passwort."
    ),
    "ews_mailbox_denied": _(
        "Exchange hat die Anmeldung angenommen, aber dieser Benutzer darf das Postfach nicht öffnen (keine "
        "Berechtigung oder kein Postfach unter dieser E-Mail-Adresse). Bitte prüfen Sie die E-Mail-Adresse und ob "
        "der Benutzername zu diesem Postfach gehört; sonst wenden Sie sich an Ihre IT-Abteilung."
    ),
    "ews_tls_failed": _(
        "Es konnte keine sichere Verbindung zum Exchange-Server aufgebaut werden. Hat der Server ein Zertifikat "
        "Ihrer eigenen Zertifizierungsstelle, fügen Sie es unter „Erweitert“ als CA-Zertifikat ein; Ihre IT-Abteilung "
        "kann es Ihnen geben."
    ),
    "rate_limited": _(
        "Zu viele Verbindungsversuche in kurzer Zeit. Bitte warten Sie zehn Minuten und versuchen Sie es dann "
        "erneut; Ihre Angaben bleiben erhalten."
    ),
    # Also what a server that is no mail server (a web server, SMTP on the IMAP port) answers.
    "protocol": _(
        "Der Server hat nicht wie ein E-Mail-Server geantwortet. Bitte prüfen Sie unter „Servereinstellungen“ "
        "Servername und Port; stimmen sie, versuchen Sie es später erneut."
    ),
    "login_slow": _(
        "Der E-Mail-Server hat Ihre Anmeldung nicht rechtzeitig beantwortet. Nach falschen Passwörtern lassen "
        "viele Server weitere Anmeldungen eine Weile warten. Bitte prüfen Sie Ihr Passwort und versuchen Sie es in "
        "einigen Minuten erneut."
    ),
    # Caps on what a server may make the portal read or wait for (IMAP_MAX_MESSAGE_BYTES, IMAP_COMMAND_MAX_SECONDS,
    # the egress guard's HTTP caps).
    "too_large": _(
        "Der E-Mail-Server hat eine Antwort geschickt, die größer ist als erlaubt. Sie wurde nicht gelesen. Bitte "
        "versuchen Sie es später erneut; bleibt es dabei, wenden Sie sich an den Support."
    ),
    "too_slow": _(
        "Der E-Mail-Server hat zu langsam geantwortet; die Verbindung wurde beendet. Bitte versuchen Sie es später "
        "erneut."
    ),
    "response_too_large": _(
        "Der E-Mail-Server hat eine ungewöhnlich große Antwort geschickt. Sie wurde zum Schutz des Portals nicht "
        "gelesen. Bitte wenden Sie sich an den Support."
    ),
    "response_too_slow": _(
        "Der E-Mail-Server hat zu langsam geantwortet. Bitte versuchen Sie es später erneut."
    ),
    "sync_internal": _(
        "Die Synchronisierung wurde durch einen unerwarteten Fehler unterbrochen. Der Fehler ist für den Support "
        "vermerkt; die nächste Synchronisierung versucht es automatisch erneut."
    ),
    # A step that kept failing in a way nobody expected (services.INTERNAL_ERROR), and one that kept
    # waiting for a provider's outage or throttling (services.RETRIES_EXHAUSTED); both clear the credentials.
    "internal_error": _(
        "Bei der Migration ist ein unerwarteter Fehler aufgetreten, auch bei mehreren weiteren Versuchen. Der "
        "Fehler ist für den Support vermerkt; Ihre Zugangsdaten wurden gelöscht. Bitte versuchen Sie es später mit "
        "„Erneut versuchen“; tritt der Fehler wieder auf, wenden Sie sich an den Support."
    ),
    "retries_exhausted": _(
        "Der Dienst Ihres Postfachs war über längere Zeit nicht erreichbar oder hat die Anfragen gebremst. Die "
        "Migration wurde nach mehreren Versuchen beendet und Ihre Zugangsdaten wurden gelöscht. Bitte versuchen Sie "
        "es in etwa einer Stunde mit „Erneut versuchen“ und melden Sie sich dabei erneut an."
    ),
    "not_supported": _(
        "Postfächer dieser Art können hier noch nicht migriert werden. Bitte wenden Sie sich an den Support."
    ),
    "secret_unreadable": _("Die gespeicherten Zugangsdaten sind nicht mehr lesbar. Bitte melden Sie sich erneut an."),
    "server_changed": _(
        "Der Support hat die Servereinstellungen dieses Kontos geändert; das gespeicherte Passwort wurde deshalb "
        "gelöscht. Bitte verbinden Sie das Konto neu."
    ),
    "cancelled_by_staff": _("Die Migration wurde vom Support abgebrochen."),
    **MICROSOFT_MESSAGES,
    **GOOGLE_MESSAGES,
}


def message_for(code: str) -> str:
    return MESSAGES.get(code, _("Die Migration ist fehlgeschlagen. Bitte versuchen Sie es erneut."))
