"""E-mails to a user about their V3 account: it needs re-connecting.

Sent once each time an account enters "Neu verbinden" (sync.services decides
that by compare-and-swap, so two runs that both meet the refusal send one
mail), queued by name after the commit like sync runs (sync.queue); and one
follow-up when it still waits after RECONNECT_FOLLOWUP_DAYS days.
"""

import logging
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from portal import mail, profiles
from sync.models import AccountStatus, MailAccount

logger = logging.getLogger(__name__)

RECONNECT_MAIL_TASK = "sync.tasks.send_reconnect_mail"


def enqueue_reconnect_mail(account_id: int) -> None:
    """Queue the mail (call it from transaction.on_commit)."""
    current_app.send_task(RECONNECT_MAIL_TASK, args=[account_id])


def send_reconnect_followups(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Beat: accounts that have waited in "Neu verbinden" for RECONNECT_FOLLOWUP_DAYS get one follow-up mail.

    One per time the account entered the state (reconnect_since): the claim
    (reconnect_followup_at, compare-and-swap) is taken before the mail is
    queued, so two beats queue it once. Accounts that entered before
    reconnect_since existed count from the first run. At most `limit` per run.
    Returns the ids queued.
    """
    now = now or timezone.now()
    MailAccount.objects.filter(status=AccountStatus.RECONNECT, reconnect_since__isnull=True).update(
        reconnect_since=now)
    not_yet = Q(reconnect_followup_at__isnull=True) | Q(reconnect_followup_at__lt=F("reconnect_since"))
    due = MailAccount.objects.filter(not_yet, status=AccountStatus.RECONNECT,
                                     reconnect_since__lte=now - timedelta(days=settings.RECONNECT_FOLLOWUP_DAYS))
    queued = []
    for pk, since in due.order_by("reconnect_since").values_list("pk", "reconnect_since")[:limit]:
        if MailAccount.objects.filter(not_yet, pk=pk, status=AccountStatus.RECONNECT, reconnect_since=since).update(
                reconnect_followup_at=now):
            queued.append(pk)
    for pk in queued:
        current_app.send_task(RECONNECT_MAIL_TASK, args=[pk], kwargs={"followup": True})
    return queued


def send_reconnect_mail(account_id: int, *, followup: bool = False) -> bool:
    """Tell the owner that the account needs them; nothing if it was re-connected meanwhile. Returns whether it sent.

    followup: the reminder after RECONNECT_FOLLOWUP_DAYS (send_reconnect_followups), with its own subject.
    """
    account = MailAccount.objects.select_related("owner").filter(pk=account_id, status=AccountStatus.RECONNECT).first()
    if account is None or not account.owner.email:
        return False
    link = mail.absolute_url(reverse("settings-mail"))
    with profiles.in_language_of(account.owner):
        subject = (_("Erinnerung: %(address)s wird seit %(days)s Tagen nicht synchronisiert, bitte neu verbinden")
                   if followup else
                   _("E-Mail-Synchronisierung von %(address)s unterbrochen: bitte neu verbinden")) % {
            "address": account.address,
            "days": (timezone.now() - account.reconnect_since).days if account.reconnect_since else 0}
        body = _(
            "Guten Tag,\n\ndas Postfach %(address)s hat die gespeicherte Anmeldung abgelehnt (Passwort geändert, "
            "Zugriff widerrufen oder Servereinstellungen geändert). Bis Sie es neu verbinden, erreichen neue E-Mails das CRM "
            "nicht.\n\nBitte öffnen Sie Einstellungen → Persönliche E-Mail-Synchronisierung und klicken Sie auf "
            "„Neu verbinden“ bzw. „Passwort neu eingeben“:\n%(link)s\n"
        ) % {"address": account.address, "link": link}
    try:
        mail.send(to=[account.owner.email], subject=subject, body=body)
    except OSError as error:
        logger.warning("re-connect mail for account %s not sent: %s", account_id, type(error).__name__)
        return False
    return True
