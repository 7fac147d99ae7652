"""Reminder e-mails to users whose accounts are still on V2.

Two ways in: support staff's bulk action "Erinnerung senden" (remind, kind
"manual") and the campaign's cadence (migration.reminder_schedule, one kind
per step). Each reminder is one Reminder row (who, when, which accounts, sent
by whom), created in the database first, and one Celery task that sends it
after the commit (send: at most once per row). Who is reminded (recipients):
active users with an e-mail address and an account still on V2, who did not
turn reminders off and got no reminder in the campaign's last
reminder_min_days calendar days.
"""

import logging
from datetime import datetime, timedelta

from django.core import signing
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from migration.models import Campaign, Reminder
from migration.selectors import current_campaign
from portal import mail, profiles
from portal.models import UserProfile
from sync.models import Engine, MailAccount

logger = logging.getLogger(__name__)

MANUAL = "manual"
UNSUBSCRIBE_SALT = "migration.reminders.unsubscribe"
# How long the opt-out link in a mail works (days): longer than any campaign.
UNSUBSCRIBE_MAX_AGE_DAYS = 400


def recipients(*, campaign: Campaign, now: datetime, user_ids=None, kind: str = MANUAL) -> dict[int, list[str]]:
    """user id -> the addresses of their V2 accounts (sorted), for every user who may be reminded now.

    user_ids: only these users (None: everybody). kind: a cadence step also
    leaves out users who already got that step in this campaign. Three queries.
    """
    accounts = MailAccount.objects.filter(engine=Engine.V2, owner__is_active=True).exclude(owner__email="")
    if user_ids is not None:
        accounts = accounts.filter(owner_id__in=list(user_ids))
    # A reminder on local day D blocks days D .. D + min_days - 1.
    first_free_day = timezone.localdate(now) - timedelta(days=campaign.reminder_min_days - 1)
    since = timezone.make_aware(datetime.combine(first_free_day, datetime.min.time()))
    blocked = Q(created_at__gte=since)
    if kind != MANUAL:
        blocked |= Q(campaign=campaign, kind=kind)
    blocked = Reminder.objects.filter(blocked)
    accounts = accounts.exclude(owner_id__in=blocked.values("user_id")).exclude(
        owner_id__in=UserProfile.objects.filter(campaign_reminders=False).values("user_id"))
    addresses: dict[int, list[str]] = {}
    for owner_id, address in accounts.order_by("address").values_list("owner_id", "address"):
        addresses.setdefault(owner_id, []).append(address)
    return addresses


def create(*, campaign: Campaign, addresses: dict[int, list[str]], kind: str, now: datetime, sent_by=None) -> list[int]:
    """Insert one Reminder per user (one query) and queue each after the commit. Returns their ids.

    Call inside transaction.atomic(). A step's reminder that exists already
    raises IntegrityError (the one_reminder_per_step constraint).
    """
    rows = Reminder.objects.bulk_create([
        Reminder(user_id=user_id, campaign=campaign, kind=kind, addresses="\n".join(owned), sent_by=sent_by,
                 created_at=now)
        for user_id, owned in addresses.items()
    ])
    ids = [row.pk for row in rows]
    transaction.on_commit(lambda: [enqueue(pk) for pk in ids])
    return ids


def remind(*, user_ids, sent_by, now: datetime | None = None) -> tuple[int, int]:
    """Staff's bulk action: queue one reminder per given user who may be reminded now. Returns (queued, skipped)."""
    now = now or timezone.now()
    user_ids = set(user_ids)
    campaign = current_campaign()
    with transaction.atomic():
        queued = create(campaign=campaign, addresses=recipients(campaign=campaign, now=now, user_ids=user_ids),
                        kind=MANUAL, now=now, sent_by=sent_by)
    return len(queued), len(user_ids) - len(queued)


def enqueue(reminder_id: int) -> None:
    from migration.tasks import send_reminder

    send_reminder.delay(reminder_id)


def requeue_unsent(*, now: datetime) -> list[int]:
    """Queue again reminders of the last day that were neither sent nor failed after 15 minutes (a broker
    message lost). Sending the same reminder twice is harmless: send() sends a row once."""
    ids = list(Reminder.objects.filter(sent_at__isnull=True, error="", created_at__lt=now - timedelta(minutes=15),
                                       created_at__gte=now - timedelta(days=1)).values_list("pk", flat=True))
    for pk in ids:
        enqueue(pk)
    return ids


def unsubscribe_token(user_id: int) -> str:
    """A signed, URL-safe token that turns reminders off for this user (no login needed)."""
    return signing.dumps(user_id, salt=UNSUBSCRIBE_SALT)


def user_for_token(token: str) -> int | None:
    """The user id a token was made for, or None if it is forged or older than UNSUBSCRIBE_MAX_AGE_DAYS."""
    try:
        value = signing.loads(token, salt=UNSUBSCRIBE_SALT, max_age=timedelta(days=UNSUBSCRIBE_MAX_AGE_DAYS))
    except signing.BadSignature:
        return None
    return value if isinstance(value, int) else None


def send(reminder_id: int) -> bool:
    """Send a queued reminder once (a redelivered task finds sent_at set and sends nothing). Returns whether it sent.

    The mail carries a link that turns reminders off, also as List-Unsubscribe
    and List-Unsubscribe-Post headers (RFC 2369, RFC 8058 one-click), so mail
    programs offer "unsubscribe" themselves. A user who turned reminders off or
    migrated every account after the reminder was queued gets nothing.
    """
    with transaction.atomic():
        reminder = Reminder.objects.select_for_update().select_related("user", "campaign").filter(
            pk=reminder_id, sent_at__isnull=True).first()
        if reminder is None:
            return False
        # Turned off or migrated while the reminder waited in the queue: the row says why nothing went out.
        skipped = ("opted_out" if not profiles.wants_reminders(reminder.user) else
                   "" if MailAccount.objects.filter(owner=reminder.user, engine=Engine.V2).exists() else "no_v2_account")
        if skipped:
            Reminder.objects.filter(pk=reminder.pk).update(error=skipped)
            return False
        # Marked before the mail leaves: at most once, like the consent mails.
        Reminder.objects.filter(pk=reminder.pk).update(sent_at=timezone.now(), error="")
    link = mail.absolute_url(reverse("settings-mail"))
    # One link per address, straight to its row with "Zu V3 migrieren" (the banner's links land there too).
    rows = dict(MailAccount.objects.filter(owner=reminder.user, engine=Engine.V2).values_list("address", "pk"))
    lines = [f"  – {address}: {link}#account-{rows[address]}" if address in rows else f"  – {address}"
             for address in reminder.addresses.splitlines()]
    unsubscribe = mail.absolute_url(reverse("reminders-unsubscribe", args=[unsubscribe_token(reminder.user_id)]))
    with profiles.in_language_of(reminder.user):
        subject = _("Bitte migrieren Sie Ihre E-Mail-Synchronisierung bis zum %(date)s") % {
            "date": mail.short_date(reminder.campaign.migrate_by)}
        body = _(
            "Guten Tag,\n\ndie E-Mail-Synchronisierung V2 wird am %(shutdown)s abgeschaltet. Danach erreichen neue "
            "E-Mails dieser Postfächer das CRM nicht mehr:\n\n%(addresses)s\n\nBitte klicken Sie bis zum %(date)s unter "
            "Einstellungen → Persönliche E-Mail-Synchronisierung auf „Zu V3 migrieren“:\n%(link)s\n"
        ) % {"shutdown": mail.short_date(reminder.campaign.v2_shutdown),
             "date": mail.short_date(reminder.campaign.migrate_by),
             "addresses": "\n".join(lines), "link": link}
        body += "\n-- \n" + _("Keine Erinnerungen mehr erhalten: %(link)s") % {"link": unsubscribe} + "\n"
    headers = {"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    try:
        mail.send(to=[reminder.user.email], subject=subject, body=body, headers=headers)
    except OSError as error:  # SMTP down or refusing: support sees it on the reminder
        Reminder.objects.filter(pk=reminder.pk).update(sent_at=None, error=type(error).__name__[:200])
        logger.warning("reminder %s not sent: %s", reminder.pk, type(error).__name__)
        return False
    return True
