"""A migration's event history in words support staff read: translated reasons, actors as e-mail addresses.

Events store short English keys on purpose (reason "retry", actor "user:12"):
they are the audit trail, stable across languages and renamed accounts. This
module turns them into text at display time, so old rows read as well as new ones.
"""

import re

from django.contrib.auth import get_user_model
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from migration import errors
from migration.models import Status

# Reasons written by the services, steps and flows, exactly as stored.
FIXED_REASONS = {
    "started": _("Gestartet"),
    "worker picked up": _("Vom Hintergrunddienst übernommen"),
    "credentials entered": _("Zugangsdaten eingegeben"),
    "signed in at Microsoft": _("Bei Microsoft angemeldet"),
    "switched to V3": _("Auf V3 umgestellt"),
    "already on V3": _("War bereits auf V3"),
    "retry": _("Erneut gestartet"),
    "cancelled": _("Abgebrochen"),
    "cancelled by user": _("Vom Benutzer abgebrochen"),
    "cancelled by support": _("Vom Support abgebrochen"),
    "admin consent granted": _("Administrator-Zustimmung erteilt"),
    "the user saw 'Need admin approval'": _("Der Benutzer hat „Administratorgenehmigung erforderlich“ gesehen"),
    "signed in with another identity": _("Mit einem anderen Microsoft-Konto angemeldet"),
    "signed in at Google": _("Bei Google angemeldet"),
    "admin consent reported": _("Administrator-Zustimmung gemeldet"),
}

# (pattern, text with %(name)s placeholders filled from the pattern's named groups)
PATTERN_REASONS = [
    (re.compile(r"^provider (?P<provider>\S+) \((?P<kind>[^)]*)\)$"), _("Anbieter erkannt: %(provider)s (%(kind)s)")),
    (re.compile(r"^provider chosen: (?P<provider>.+)$"), _("Anbieter gewählt: %(provider)s")),
    (re.compile(r"^verified, (?P<count>\d+) folders$"), _("Verbindung geprüft, %(count)s Ordner")),
    (re.compile(r"^admin consent required: (?P<detail>.*)$"), _("Administrator-Zustimmung erforderlich: %(detail)s")),
    (re.compile(r"^verify: (?P<code>\S+)$"), _("Prüfung fehlgeschlagen: %(error)s")),
    # services.give_up: the step (a status) and what went wrong, as logged (its detail stays as stored).
    (re.compile(r"^(?P<status>[a-z_]+): gave up after (?P<detail>.*)$"),
     _("Aufgegeben im Schritt „%(status)s“ nach %(detail)s")),
    (re.compile(r"^Exchange Online host (?P<host>\S+): Microsoft 365 \(Graph\) instead of EWS$"),
     _("Exchange-Online-Server %(host)s: Microsoft 365 (Graph) statt EWS")),
]

ACTORS = {
    "system": _("System"),
    "worker": _("Hintergrunddienst"),
    "microsoft": _("Microsoft"),
}


def reason_text(reason: str) -> str:
    """The event's reason in the active language; an unknown reason is shown as stored."""
    if reason in FIXED_REASONS:
        return str(FIXED_REASONS[reason])
    if reason in errors.MESSAGES:  # services.fail() without a reason stores the error code
        return f"{errors.message_for(reason)} ({reason})"
    for pattern, text in PATTERN_REASONS:
        match = pattern.match(reason)
        if match:
            values = match.groupdict()
            if "code" in values:
                values["error"] = f"{errors.message_for(values['code'])} ({values['code']})"
            if values.get("status") in Status.values:
                values["status"] = str(Status(values["status"]).label)
            return str(text) % values
    return reason


def actor_emails(actors) -> dict[int, str]:
    """One query: user id -> e-mail for every "user:<id>" / "staff:<id>" actor in actors."""
    ids = {int(pk) for actor in actors for kind, _sep, pk in [actor.partition(":")]
           if kind in ("user", "staff") and pk.isdigit()}
    if not ids:
        return {}
    User = get_user_model()
    return {pk: email or username for pk, email, username in
            User.objects.filter(pk__in=ids).values_list("pk", "email", "username")}


def actor_text(actor: str, emails: dict[int, str]) -> str:
    """"user:12" -> the user's e-mail; "staff:3" -> "Support: <e-mail>"; worker/system/microsoft translated."""
    kind, _sep, pk = actor.partition(":")
    if kind in ("user", "staff") and pk.isdigit():
        email = emails.get(int(pk), gettext("gelöschter Benutzer %(id)s") % {"id": pk})
        return gettext("Support: %(email)s") % {"email": email} if kind == "staff" else email
    if actor in ACTORS:
        return str(ACTORS[actor])
    return actor
