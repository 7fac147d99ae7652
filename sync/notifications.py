"""E-mails to a user about their V3 account: it needs re-connecting.

Sent once each time an account enters "Neu verbinden" (sync.services decides
that by compare-and-swap, so two runs that both meet the refusal send one
mail), queued by name after the commit like sync runs (sync.queue).
"""

import logging

from celery import current_app
from django.conf import settings
from django.core.mail import send_mail
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _

from sync.models import AccountStatus, MailAccount

logger = logging.getLogger(__name__)

RECONNECT_MAIL_TASK = "sync.tasks.send_reconnect_mail"


def enqueue_reconnect_mail(account_id: int) -> None:
    """Queue the mail (call it from transaction.on_commit)."""
    current_app.send_task(RECONNECT_MAIL_TASK, args=[account_id])


def send_reconnect_mail(account_id: int) -> bool:
    """Tell the owner that the account needs them; nothing if it was re-connected meanwhile. Returns whether it sent."""
    account = MailAccount.objects.select_related("owner").filter(pk=account_id, status=AccountStatus.RECONNECT).first()
    if account is None or not account.owner.email:
        return False
    link = settings.SITE_URL.rstrip("/") + reverse("settings-mail")
    with translation.override(settings.LANGUAGE_CODE):
        subject = _("E-Mail-Synchronisierung von %(address)s unterbrochen: bitte neu verbinden") % {
            "address": account.address}
        body = _(
            "Guten Tag,\n\ndas Postfach %(address)s hat die gespeicherte Anmeldung abgelehnt (Passwort geändert, "
            "Zugriff widerrufen oder Servereinstellungen geändert). Bis Sie es neu verbinden, erreichen neue E-Mails das CRM "
            "nicht.\n\nBitte öffnen Sie Einstellungen → Persönliche E-Mail-Synchronisierung und klicken Sie auf "
            "„Neu verbinden“ bzw. „Passwort neu eingeben“:\n%(link)s\n"
        ) % {"address": account.address, "link": link}
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [account.owner.email])
    except OSError as error:
        logger.warning("re-connect mail for account %s not sent: %s", account_id, type(error).__name__)
        return False
    return True
