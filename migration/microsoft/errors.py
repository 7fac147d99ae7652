"""User-facing texts for the Microsoft error codes (merged into migration.errors)."""

from django.utils.translation import gettext_lazy as _

MESSAGES = {
    "ms_not_configured": _(
        "Die Anmeldung mit Microsoft ist in diesem Portal noch nicht eingerichtet. Bitte wenden Sie sich an den "
        "Support."
    ),
    "ms_wrong_account": _(
        "Sie haben sich bei Microsoft mit einem anderen Konto angemeldet als dem, das migriert wird. Es wurde "
        "nichts gespeichert. Bitte melden Sie sich erneut an und wählen Sie das Konto mit dieser E-Mail-Adresse."
    ),
    "ms_code_rejected": _(
        "Microsoft hat die Anmeldung nicht bestätigt (der Anmeldecode war ungültig, abgelaufen oder schon "
        "verwendet). Bitte melden Sie sich erneut an."
    ),
    "ms_state_mismatch": _(
        "Die Antwort von Microsoft gehört nicht zu Ihrer Anmeldung. Es wurde nichts geändert. Bitte melden Sie "
        "sich erneut an."
    ),
    "ms_denied": _("Die Anmeldung bei Microsoft wurde abgebrochen. Sie können es jederzeit erneut versuchen."),
    "ms_unreachable": _("Microsoft war nicht erreichbar. Bitte versuchen Sie es in einigen Minuten erneut."),
    "ms_graph_denied": _(
        "Microsoft hat den Zugriff auf das Postfach verweigert. Bitte prüfen Sie, ob zu diesem Konto ein "
        "Postfach gehört, und versuchen Sie es erneut."
    ),
    "ms_mailbox_busy": _(
        "Ihr Postfach wird gerade von mehreren Vorgängen gleichzeitig gelesen. Das Portal versucht es in einigen "
        "Minuten von selbst erneut."
    ),
    "ms_protocol": _("Microsoft hat unerwartet geantwortet. Bitte versuchen Sie es später erneut."),
    # MS_MAX_RESPONSE_BYTES / MS_MAX_RESPONSE_SECONDS (sync.microsoft.client.capped).
    "ms_too_large": _(
        "Microsoft hat eine Antwort geschickt, die größer ist als erlaubt. Sie wurde nicht gelesen. Bitte versuchen "
        "Sie es später erneut."
    ),
    "ms_too_slow": _(
        "Microsoft hat zu langsam geantwortet; die Verbindung wurde beendet. Bitte versuchen Sie es später erneut."
    ),
    "ms_reconnect": _(
        "Die Verbindung zu Microsoft ist abgelaufen oder wurde widerrufen. Bitte verbinden Sie das Konto neu."
    ),
    "ms_declined": _(
        "Sie haben bei Microsoft die Zustimmung abgelehnt, deshalb darf das CRM Ihre E-Mails nicht lesen. Es wurde "
        "nichts geändert. Wenn Sie es sich anders überlegen, melden Sie sich erneut an und stimmen Sie zu."
    ),
    "ms_personal_account": _(
        "Sie haben sich mit einem privaten Microsoft-Konto (z. B. Outlook.com oder Hotmail) angemeldet, dieses "
        "Portal nimmt aber nur Geschäfts- und Schulkonten an. Bitte melden Sie sich mit Ihrem Geschäftskonto an. "
        "Sollen auch private Konten migriert werden, wenden Sie sich bitte an den Support (Einstellung MS_AUTHORITY: "
        "https://login.microsoftonline.com/common)."
    ),
    "ms_admin_consent": _("Für dieses Konto ist die Zustimmung eines Administrators nötig."),
    "ms_mailbox_on_premises": _(
        "Ihr Postfach liegt auf dem Exchange-Server Ihres Unternehmens, nicht in Microsoft 365, und lässt sich "
        "über die Microsoft-Anmeldung nicht lesen. Bitte wählen Sie als Anbieter „Microsoft Exchange“ und melden "
        "Sie sich mit Ihrem Exchange-Zugang an."
    ),
}
