"""User-facing texts for the Google error codes (merged into migration.errors)."""

from django.utils.translation import gettext_lazy as _

MESSAGES = {
    "google_not_configured": _(
        "Die Anmeldung mit Google ist in diesem Portal noch nicht eingerichtet. Sie können Ihr Google-Postfach "
        "mit einem App-Passwort über IMAP verbinden oder sich an den Support wenden."
    ),
    "google_wrong_account": _(
        "Sie haben sich bei Google mit einem anderen Konto angemeldet als dem, das migriert wird. Es wurde nichts "
        "gespeichert. Bitte melden Sie sich erneut an und wählen Sie das Konto mit dieser E-Mail-Adresse."
    ),
    "google_state_mismatch": _(
        "Die Antwort von Google gehört nicht zu Ihrer Anmeldung. Es wurde nichts geändert. Bitte melden Sie sich "
        "erneut an."
    ),
    "google_denied": _("Die Anmeldung bei Google wurde abgebrochen. Sie können es jederzeit erneut versuchen."),
    "google_scope_missing": _(
        "Sie haben bei Google den Zugriff auf Ihre E-Mails nicht erlaubt, deshalb kann das CRM sie nicht lesen. "
        "Bitte melden Sie sich erneut an und setzen Sie den Haken beim Zugriff auf Gmail."
    ),
    "google_admin_policy": _(
        "Ihre Google-Workspace-Verwaltung erlaubt dem CRM den Zugriff auf Postfächer nicht. Ein Administrator "
        "muss die App in der Google Admin-Konsole unter „Sicherheit → Zugriffs- und Datenkontrolle → API-"
        "Steuerung → Zugriff von Drittanbieter-Apps verwalten“ als vertrauenswürdig einstufen. Danach melden "
        "Sie sich erneut an."
    ),
    "google_reconnect": _(
        "Die Verbindung zu Google ist abgelaufen oder wurde widerrufen. Bitte verbinden Sie das Konto neu."
    ),
    "google_unreachable": _("Google war nicht erreichbar. Bitte versuchen Sie es in einigen Minuten erneut."),
    "google_protocol": _("Google hat unerwartet geantwortet. Bitte versuchen Sie es später erneut."),
}
