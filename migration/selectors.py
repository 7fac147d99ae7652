from dataclasses import dataclass
from datetime import date

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.shortcuts import get_object_or_404

from migration.models import ACTIVE_STATUSES, Campaign, Migration
from sync.models import MailAccount

CAMPAIGN_CACHE_KEY = "campaign:current"


@dataclass(frozen=True)
class CampaignDates:
    id: int
    migrate_by: date
    v2_shutdown: date

    def v2_running(self, today: date) -> bool:
        return today < self.v2_shutdown


def current_campaign() -> Campaign:
    campaign = Campaign.objects.filter(is_active=True).first()
    if campaign is None:
        try:
            with transaction.atomic():
                campaign = Campaign.objects.create(
                    name="V2 → V3", migrate_by=settings.CAMPAIGN_MIGRATE_BY,
                    v2_shutdown=settings.CAMPAIGN_V2_SHUTDOWN, is_active=True,
                )
        except IntegrityError:  # another process created it first
            campaign = Campaign.objects.get(is_active=True)
    return campaign


def current_campaign_dates() -> CampaignDates:
    """Cached: the banner reads this on every page."""
    dates = cache.get(CAMPAIGN_CACHE_KEY)
    if dates is None:
        campaign = current_campaign()
        dates = CampaignDates(campaign.pk, campaign.migrate_by, campaign.v2_shutdown)
        cache.set(CAMPAIGN_CACHE_KEY, dates, settings.BANNER_CACHE_SECONDS)
    return dates


def v2_shutdown_date() -> date:
    """The active campaign's V2 shutdown date (settings.SYNC_V2_SHUTDOWN_DATE names this)."""
    return current_campaign_dates().v2_shutdown


def invalidate_campaign() -> None:
    transaction.on_commit(lambda: cache.delete(CAMPAIGN_CACHE_KEY))


def get_migration_for_user(user, pk: int) -> Migration:
    """404 for anything that is not the user's own."""
    return get_object_or_404(Migration.objects.select_related("account"), pk=pk, account__owner=user)


# What the settings page shows of a migration: its link, its state and its failure. The JSON columns
# (detected, connection, cursors, the encrypted secret) stay in the database.
SETTINGS_PAGE_FIELDS = ("id", "account_id", "status", "error_code", "created_at")
# Written out, not built by the ORM: on the busiest page of the portal building and compiling the
# equivalent queryset cost ~0.6 ms of CPU per request, sending this text ~0.1 ms (scripts/bench_work.py,
# issue 13). Portable SQL (SQLite and PostgreSQL).
_SETTINGS_PAGE_SQL = (
    f"SELECT {', '.join(f'm.{name}' for name in SETTINGS_PAGE_FIELDS)} FROM {Migration._meta.db_table} m"
    f" INNER JOIN {MailAccount._meta.db_table} a ON a.id = m.account_id"
    f" WHERE a.owner_id = %s ORDER BY m.created_at, m.id"
)


def migrations_by_account(user) -> tuple[dict[int, Migration], dict[int, Migration]]:
    """({account id: its active migration}, {account id: its latest migration}) in one query.

    For the settings page: one query whatever the number of accounts (it was two, each loading
    every column). Rows carry only SETTINGS_PAGE_FIELDS. An account has at most one active
    migration (a constraint); were there two, the older one is returned, as before.
    """
    active, latest = {}, {}
    for migration in Migration.objects.raw(_SETTINGS_PAGE_SQL, [user.pk]):
        latest[migration.account_id] = migration
        if migration.status in ACTIVE_STATUSES:
            active.setdefault(migration.account_id, migration)
    return active, latest
