"""The campaign's reminder cadence: which step is due on a day, and the beat task's run.

Staff edit the cadence per campaign (admin "Kampagnen"): days before
migrate-by (default 30, 14, 7, 3, 1), the day after migrate-by, and the
shutdown day. Each step is a Reminder kind ("before-7", "after-1",
"shutdown"). On a day, the step due is the latest one whose day has come,
until the shutdown day: a beat that was down on a step's day sends it the
next time it runs, and a user whom the minimum gap held back gets it once the
gap has passed. Never twice for the same step: the database refuses a second
row (one_reminder_per_step).

Two beats (or a redelivered task) are safe: run_due_reminders claims the
campaign's day by compare-and-swap (reminders_run_on) in the same
transaction that inserts the reminders, so one run per day inserts and every
other finds the day taken; a run that fails rolls its claim back and the
next one tries again.
"""

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from migration import reminders
from migration.models import Campaign, parse_day_list
from migration.selectors import current_campaign


@dataclass(frozen=True)
class Step:
    kind: str  # the Reminder.kind: "before-<days>", "after-1" or "shutdown"
    day: date


def schedule(campaign: Campaign) -> list[Step]:
    """The campaign's steps, earliest first; where two fall on one day, the first listed of them."""
    steps = [Step(f"before-{days}", campaign.migrate_by - timedelta(days=days))
             for days in parse_day_list(campaign.reminder_days_before)]
    if campaign.reminder_day_after:
        steps.append(Step("after-1", campaign.migrate_by + timedelta(days=1)))
    if campaign.reminder_on_shutdown:
        steps.append(Step("shutdown", campaign.v2_shutdown))
    by_day: dict[date, Step] = {}
    for step in steps:
        by_day.setdefault(step.day, step)
    return sorted(by_day.values(), key=lambda step: step.day)


def due_step(campaign: Campaign, today: date) -> Step | None:
    """The latest step whose day is today or past, while V2 still runs (until the shutdown day); else None."""
    if today > campaign.v2_shutdown:
        return None
    past = [step for step in schedule(campaign) if step.day <= today]
    return past[-1] if past else None


def run_due_reminders(*, now: datetime | None = None) -> list[int]:
    """The beat task's work: today's step for every user who may be reminded, once per day. Returns the new
    reminders' ids (queued after the commit). Nothing before REMINDER_SEND_HOUR local time."""
    now = now or timezone.now()
    today = timezone.localdate(now)
    if timezone.localtime(now).hour < settings.REMINDER_SEND_HOUR:
        return []
    campaign = current_campaign()
    step = due_step(campaign, today)
    if step is None:
        return []
    with transaction.atomic():
        claimed = Campaign.objects.filter(Q(reminders_run_on__isnull=True) | Q(reminders_run_on__lt=today),
                                          pk=campaign.pk).update(reminders_run_on=today)
        if not claimed:
            return []
        addresses = reminders.recipients(campaign=campaign, now=now, kind=step.kind)
        return reminders.create(campaign=campaign, addresses=addresses, kind=step.kind, now=now)
