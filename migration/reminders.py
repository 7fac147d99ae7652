"""Reminder e-mails to users whose accounts are still on V2.

Support staff send them from the campaign list ("Erinnerung senden"); each is
one Reminder row (who, when, which accounts, sent by whom) and one Celery task
that sends it after the commit. A user is reminded at most once per
MIN_DAYS_BETWEEN days, however often staff press the button.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from migration.models import Reminder
from migration.selectors import current_campaign
from sync.models import Engine, MailAccount

logger = logging.getLogger(__name__)

MIN_DAYS_BETWEEN = 1
MANUAL = "manual"


def remind(*, user_ids, sent_by, kind: str = MANUAL) -> tuple[int, int]:
    """Queue one reminder per user who still has V2 accounts and was not reminded in the last MIN_DAYS_BETWEEN days.

    Returns (queued, skipped). Four queries plus one insert per reminded user.
    """
    user_ids = set(user_ids)
    since = timezone.now() - timedelta(days=MIN_DAYS_BETWEEN)
    recent = set(Reminder.objects.filter(user_id__in=user_ids, created_at__gte=since).values_list("user_id", flat=True))
    addresses: dict[int, list[str]] = {}
    for owner_id, address in MailAccount.objects.filter(owner_id__in=user_ids - recent, engine=Engine.V2).values_list(
            "owner_id", "address").order_by("address"):
        addresses.setdefault(owner_id, []).append(address)
    campaign = current_campaign()
    queued = []
    with transaction.atomic():
        for user_id, owned in addresses.items():
            reminder = Reminder.objects.create(user_id=user_id, campaign=campaign, kind=kind,
                                               addresses="\n".join(owned), sent_by=sent_by)
            queued.append(reminder.pk)
        transaction.on_commit(lambda: [_enqueue(pk) for pk in queued])
    return len(queued), len(user_ids) - len(queued)


def _enqueue(reminder_id: int) -> None:
    from migration.tasks import send_reminder

    send_reminder.delay(reminder_id)


def send(reminder_id: int) -> bool:
    """Send a queued reminder once (a redelivered task finds sent_at set and sends nothing). Returns whether it sent."""
    with transaction.atomic():
        reminder = Reminder.objects.select_for_update().select_related("user", "campaign").filter(
            pk=reminder_id, sent_at__isnull=True).first()
        if reminder is None:
            return False
        # Marked before the mail leaves: at most once, like the consent mails.
        Reminder.objects.filter(pk=reminder.pk).update(sent_at=timezone.now())
    link = settings.SITE_URL.rstrip("/") + reverse("settings-mail")
    with translation.override(settings.LANGUAGE_CODE):
        subject = _("Bitte migrieren Sie Ihre E-Mail-Synchronisierung bis zum %(date)s") % {
            "date": reminder.campaign.migrate_by.strftime("%d.%m.%Y")}
        body = _(
            "Guten Tag,\n\ndie E-Mail-Synchronisierung V2 wird am %(shutdown)s abgeschaltet. Danach erreichen neue "
            "E-Mails dieser Postfächer das CRM nicht mehr:\n\n%(addresses)s\n\nBitte klicken Sie bis zum %(date)s unter "
            "Einstellungen → Persönliche E-Mail-Synchronisierung auf „Zu V3 migrieren“:\n%(link)s\n"
        ) % {"shutdown": reminder.campaign.v2_shutdown.strftime("%d.%m.%Y"),
             "date": reminder.campaign.migrate_by.strftime("%d.%m.%Y"),
             "addresses": "\n".join(f"  – {a}" for a in reminder.addresses.splitlines()), "link": link}
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [reminder.user.email])
    except OSError as error:  # SMTP down or refusing: support sees it on the reminder
        Reminder.objects.filter(pk=reminder.pk).update(sent_at=None, error=type(error).__name__[:200])
        logger.warning("reminder %s not sent: %s", reminder.pk, type(error).__name__)
        return False
    return True
