from dataclasses import dataclass
from datetime import date
from datetime import timezone as dt_timezone

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.shortcuts import get_object_or_404
from django.utils import timezone

from migration.models import ACTIVE_STATUSES, Campaign, Migration
from sync.models import MailAccount, SkippedMessage

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


# The settings page's table in one query (issue 13: each round trip to PostgreSQL cost the page ~0.1 ms of
# the database's CPU and ~0.05 ms of ours): per account the columns shown and its skipped count, joined to
# its migrations, oldest first. Only the columns shown: the encrypted secrets and a migration's JSON state
# stay in the database. Written out and read through a plain cursor, not the ORM (building the querysets
# and their model instances cost ~0.6 ms of CPU per request); portable SQL (SQLite and PostgreSQL).
SETTINGS_PAGE_ACCOUNT_FIELDS = ("pk", "address", "provider_kind", "engine", "status", "last_sync_at", "last_sync_error",
                                "skipped_count")
_SETTINGS_PAGE_SQL = (
    "SELECT a.id, a.address, a.provider_kind, a.engine, a.status, a.last_sync_at, a.last_sync_error,"
    f" (SELECT COUNT(*) FROM {SkippedMessage._meta.db_table} s WHERE s.account_id = a.id),"
    " m.id, m.status, m.error_code"
    f" FROM {MailAccount._meta.db_table} a LEFT JOIN {Migration._meta.db_table} m ON m.account_id = a.id"
    " WHERE a.owner_id = %s ORDER BY a.address, a.id, m.created_at, m.id"
)


def settings_page_rows(user) -> list[dict]:
    """The settings page's table for `user`, in one query whatever the number of accounts and migrations.

    One dict per account, by address: SETTINGS_PAGE_ACCOUNT_FIELDS ("pk" the account's id, "last_sync_at"
    an aware datetime or None, "skipped_count" an int), plus "active" (its active migration) and "latest"
    (its latest migration), each {"pk", "status", "error_code"} or None. An account has at most one active
    migration (a constraint); were there two, the older one is returned.
    """
    rows = {}
    with connection.cursor() as cursor:
        cursor.execute(_SETTINGS_PAGE_SQL, [user.pk])
        for *account, migration_id, migration_status, error_code in cursor.fetchall():
            row = rows.get(account[0])
            if row is None:
                row = rows[account[0]] = dict(zip(SETTINGS_PAGE_ACCOUNT_FIELDS, account), active=None, latest=None)
                if row["last_sync_at"] is not None and timezone.is_naive(row["last_sync_at"]):
                    row["last_sync_at"] = timezone.make_aware(row["last_sync_at"], dt_timezone.utc)  # SQLite's
            if migration_id is not None:
                # Oldest first: the last one seen is the latest.
                row["latest"] = {"pk": migration_id, "status": migration_status, "error_code": error_code}
                if row["active"] is None and migration_status in ACTIVE_STATUSES:
                    row["active"] = row["latest"]
    return list(rows.values())
