"""A daily digest for support staff: the campaign's counts and a link to the dashboard.

Sent once a day (not before REMINDER_SEND_HOUR) when at least
STAFF_DIGEST_BROKEN_PERCENT of the V3 accounts wait in "Neu verbinden" (0:
every day). The day is claimed on the campaign row (digest_sent_on,
compare-and-swap), so two beats send one digest; if no recipient could be
reached the claim is released and the next run tries again. Recipients:
STAFF_DIGEST_TO, else every active staff user with an e-mail address, each in
their own language.
"""

import logging
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from migration import campaign as campaign_numbers
from migration.campaign import CampaignState
from migration.models import Campaign
from migration.selectors import current_campaign
from portal import mail, profiles

logger = logging.getLogger(__name__)


def broken_share(overview) -> float:
    """Percent of the V3 accounts (done + re-connect needed) that wait in "Neu verbinden" (0.0 if none on V3)."""
    broken = overview.by_state.get(CampaignState.RECONNECT, 0)
    on_v3 = broken + overview.by_state.get(CampaignState.DONE, 0)
    return 100.0 * broken / on_v3 if on_v3 else 0.0


def send_digest(*, now: datetime | None = None) -> int:
    """Send today's digest if due and not sent yet. Returns the number of mails sent (0: not due, or sent today)."""
    now = now or timezone.now()
    today = timezone.localdate(now)
    if timezone.localtime(now).hour < settings.REMINDER_SEND_HOUR:
        return 0
    campaign = current_campaign()
    overview = campaign_numbers.overview(domain_limit=5)
    share = broken_share(overview)
    if share < settings.STAFF_DIGEST_BROKEN_PERCENT:
        return 0
    if not Campaign.objects.filter(Q(digest_sent_on__isnull=True) | Q(digest_sent_on__lt=today),
                                   pk=campaign.pk).update(digest_sent_on=today):
        return 0  # another beat sent today's
    sent = 0
    for recipient, user in _recipients():
        try:
            _send_one(recipient, user, campaign, overview, share)
            sent += 1
        except OSError as error:
            logger.warning("staff digest to a recipient not sent: %s", type(error).__name__)
    if not sent:
        Campaign.objects.filter(pk=campaign.pk, digest_sent_on=today).update(digest_sent_on=None)
    return sent


def _recipients():
    """(address, user or None) pairs: STAFF_DIGEST_TO, else the active staff users with an e-mail address."""
    if settings.STAFF_DIGEST_TO:
        return [(address, None) for address in settings.STAFF_DIGEST_TO]
    users = get_user_model().objects.filter(is_staff=True, is_active=True).exclude(email="").order_by("pk")
    return [(user.email, user) for user in users]


def _send_one(address: str, user, campaign: Campaign, overview, share: float) -> None:
    with profiles.in_language_of(user) if user else _default_language():
        counts = "\n".join(f"  {overview.by_state.get(key, 0):>6}  {label}" for key, label in CampaignState.CHOICES)
        subject = _("Kampagne %(name)s: noch %(left)s von %(total)s Konten auf V2") % {
            "name": campaign.name, "left": overview.on_v2, "total": overview.total}
        body = _(
            "Stand der Kampagne %(name)s (Migrieren bis %(migrate_by)s, V2-Abschaltung %(shutdown)s):\n\n%(counts)s\n\n"
            "Nie begonnen: %(never)s. Neu verbinden nötig: %(share)s %% der Konten auf V3.\n\n"
            "Übersicht, Listen und Aktionen:\n%(link)s\n"
        ) % {"name": campaign.name, "migrate_by": mail.short_date(campaign.migrate_by),
             "shutdown": mail.short_date(campaign.v2_shutdown), "counts": counts, "never": overview.never_started,
             "share": f"{share:.1f}", "link": mail.absolute_url(reverse("admin:campaign-dashboard"))}
    mail.send(to=[address], subject=subject, body=body)


def _default_language():
    from django.utils import translation

    return translation.override(settings.LANGUAGE_CODE)
