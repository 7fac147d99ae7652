"""Read side of the campaign for support staff: each account's state, the dashboard's numbers, the burn-down.

One annotated queryset (campaign_accounts) defines an account's campaign
state; the dashboard counts it and the support list (campaign_admin) filters
it, so every number on the dashboard is exactly the length of the list it
links to. Every function here costs a fixed number of queries, whatever the
number of accounts (tests/test_campaign_dashboard.py counts them).
"""

from dataclasses import dataclass, field
from datetime import date, timedelta

from django.db.models import Case, CharField, Count, Min, OuterRef, Subquery, Value, When
from django.db.models.functions import Lower, StrIndex, Substr, TruncDate
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from migration.models import ACTIVE_STATUSES, Campaign, CampaignAccount, Migration, Status, TenantConsent
from sync.models import AccountStatus, Engine


class CampaignState:
    """An account's place in the campaign (not a model field: derived from the account and its latest migration)."""

    NOT_STARTED = "not_started"
    IN_PROGRESS = "in_progress"
    AWAITING_USER = "awaiting_user"
    AWAITING_ADMIN_CONSENT = "awaiting_admin_consent"
    FAILED = "failed"
    DONE = "done"
    RECONNECT = "reconnect"

    CHOICES = [
        (NOT_STARTED, _("Nicht begonnen")),
        (IN_PROGRESS, _("In Arbeit")),
        (AWAITING_USER, _("Wartet auf den Benutzer")),
        (AWAITING_ADMIN_CONSENT, _("Wartet auf Administrator-Zustimmung")),
        (FAILED, _("Fehlgeschlagen")),
        (DONE, _("Abgeschlossen")),
        (RECONNECT, _("Neu verbinden nötig")),
    ]
    LABELS = dict(CHOICES)
    # Still on V2: what the burn-down counts and the reminders are about.
    ON_V2 = [NOT_STARTED, IN_PROGRESS, AWAITING_USER, AWAITING_ADMIN_CONSENT, FAILED]
    # Waiting in a live migration: what "stuck since" looks at.
    WAITING = [IN_PROGRESS, AWAITING_USER, AWAITING_ADMIN_CONSENT]


IN_PROGRESS_STATUSES = [Status.PENDING, Status.DETECTING, Status.VERIFYING, Status.HANDING_OVER]


def campaign_accounts():
    """Every account, annotated: latest_migration_id/status/error/updated, domain (lower case), campaign_state.

    The latest migration is the newest by creation; a cancelled one leaves the
    account "not started" again. An account on V3 is done, or needs
    re-connecting when its grant or password was refused.
    """
    latest = Migration.objects.filter(account=OuterRef("pk")).order_by("-created_at", "-pk")
    return CampaignAccount.objects.annotate(
        latest_migration_id=Subquery(latest.values("pk")[:1]),
        latest_status=Subquery(latest.values("status")[:1]),
        latest_error=Subquery(latest.values("error_code")[:1]),
        latest_updated=Subquery(latest.values("updated_at")[:1]),
        domain=Lower(Substr("address", StrIndex("address", Value("@")) + 1)),
    ).annotate(campaign_state=Case(
        When(engine=Engine.V3, status=AccountStatus.RECONNECT, then=Value(CampaignState.RECONNECT)),
        When(engine=Engine.V3, then=Value(CampaignState.DONE)),
        When(latest_status__in=IN_PROGRESS_STATUSES, then=Value(CampaignState.IN_PROGRESS)),
        When(latest_status=Status.AWAITING_USER, then=Value(CampaignState.AWAITING_USER)),
        When(latest_status=Status.AWAITING_ADMIN_CONSENT, then=Value(CampaignState.AWAITING_ADMIN_CONSENT)),
        When(latest_status=Status.FAILED, then=Value(CampaignState.FAILED)),
        default=Value(CampaignState.NOT_STARTED),
        output_field=CharField(),
    ))


def stuck_since(queryset, since):
    """Accounts whose live migration has not moved since `since` (a datetime)."""
    return queryset.filter(campaign_state__in=CampaignState.WAITING, latest_updated__lt=since)


@dataclass
class DomainRow:
    domain: str
    providers: set = field(default_factory=set)
    counts: dict = field(default_factory=dict)
    consent: str = ""  # the Microsoft tenant's consent status label, if the portal knows the tenant

    @property
    def remaining(self) -> int:
        return sum(self.counts.get(state, 0) for state in CampaignState.ON_V2)


@dataclass
class Overview:
    total: int
    by_state: dict  # state -> count
    by_provider: dict  # provider_kind -> {state -> count}
    domains: list  # DomainRow, most accounts still on V2 first
    never_started: int

    @property
    def on_v2(self) -> int:
        return sum(self.by_state.get(state, 0) for state in CampaignState.ON_V2)


def overview(*, domain_limit: int = 25) -> Overview:
    """Counts per state, per provider and per mail domain (Microsoft: the tenant). Three queries."""
    by_state, by_provider, domains = {}, {}, {}
    rows = campaign_accounts().values("campaign_state", "provider_kind", "domain").annotate(n=Count("pk")).order_by()
    for row in rows:
        state, provider, n = row["campaign_state"], row["provider_kind"], row["n"]
        by_state[state] = by_state.get(state, 0) + n
        by_provider.setdefault(provider, {})[state] = by_provider.get(provider, {}).get(state, 0) + n
        domain = domains.setdefault(row["domain"], DomainRow(row["domain"]))
        domain.providers.add(provider)
        domain.counts[state] = domain.counts.get(state, 0) + n
    top = sorted(domains.values(), key=lambda d: (-d.remaining, d.domain))[:domain_limit]
    consents = dict(TenantConsent.objects.filter(tenant__in=[d.domain for d in top if "microsoft" in d.providers])
                    .values_list("tenant", "status"))
    labels = dict(TenantConsent._meta.get_field("status").choices)
    for row in top:
        if row.domain in consents:
            row.consent = labels.get(consents[row.domain], consents[row.domain])
    never = campaign_accounts().filter(engine=Engine.V2, latest_migration_id__isnull=True).count()
    return Overview(total=sum(by_state.values()), by_state=by_state, by_provider=by_provider, domains=top,
                    never_started=never)


def oldest_stuck(limit: int = 10):
    """The live migrations that have not moved for longest (one query)."""
    return list(Migration.objects.filter(status__in=ACTIVE_STATUSES).select_related("account", "user")
                .order_by("updated_at")[:limit])


def never_started(limit: int = 10):
    """Accounts on V2 without any migration, oldest first (one query)."""
    return list(campaign_accounts().filter(engine=Engine.V2, latest_migration_id__isnull=True)
                .select_related("owner").order_by("created_at", "pk")[:limit])


@dataclass
class BurnDown:
    start: date
    migrate_by: date
    shutdown: date
    today: date
    # (day, accounts on V2 at the end of that day) from start to today
    actual: list
    # accounts moved per day over the last PACE_DAYS days (or since the start, if shorter)
    pace: float
    # (day, projected accounts on V2) from today until zero or the shutdown, at the current pace
    projection: list

    @property
    def remaining_at_shutdown(self) -> int:
        return self.projection[-1][1] if self.projection else (self.actual[-1][1] if self.actual else 0)

    @property
    def done_on(self) -> date | None:
        """The day the projection reaches zero, if it does by the shutdown."""
        for day, value in self.projection:
            if value == 0:
                return day
        return None


PACE_DAYS = 7


def burn_down(campaign: Campaign, *, today: date | None = None) -> BurnDown:
    """Accounts on V2 per day from the campaign's start to today, and the projection to the shutdown.

    The campaign starts on the day of its first migration (today if none).
    An account leaves V2 on the day its handoff stopped V2 (v2_stopped_at of
    an account now on V3); the accounts still on V2 today are counted as they
    are, so the series ends at today's real number. Three queries.
    """
    today = today or timezone.localdate()
    first = Migration.objects.filter(campaign=campaign).aggregate(first=Min("created_at"))["first"]
    start = min(timezone.localtime(first).date(), today) if first else today
    on_v2_now = CampaignAccount.objects.filter(engine=Engine.V2).count()
    moved = dict(
        CampaignAccount.objects.filter(engine=Engine.V3, v2_stopped_at__isnull=False,
                                       v2_stopped_at__date__gte=start)
        .annotate(day=TruncDate("v2_stopped_at")).values("day").annotate(n=Count("pk")).values_list("day", "n")
    )
    actual, remaining = [], on_v2_now
    day = today
    while day >= start:
        actual.append((day, remaining))
        remaining += moved.get(day, 0)
        day -= timedelta(days=1)
    actual.reverse()
    window_start = max(start, today - timedelta(days=PACE_DAYS - 1))
    window_days = (today - window_start).days + 1
    pace = sum(n for d, n in moved.items() if d >= window_start) / window_days
    projection, value, day = [(today, on_v2_now)], float(on_v2_now), today
    while day < campaign.v2_shutdown and value > 0 and pace > 0:
        day += timedelta(days=1)
        value = max(0.0, value - pace)
        projection.append((day, round(value)))
    if pace <= 0 and today < campaign.v2_shutdown:
        projection.append((campaign.v2_shutdown, on_v2_now))
    return BurnDown(start=start, migrate_by=campaign.migrate_by, shutdown=campaign.v2_shutdown, today=today,
                    actual=actual, pace=pace, projection=projection)

