"""The orange deadline banner: which of the user's addresses still run on V2.

It is on every page, so it must cost no query on a typical request: the
per-user account list and the campaign dates are cached, and the services
that change an account's engine drop the user's entry.
"""

import functools
from dataclasses import dataclass
from datetime import date

from django.conf import settings
from django.core.cache import cache
from django.utils import formats, timezone
from django.utils.translation import get_language

from migration.selectors import CAMPAIGN_CACHE_KEY, current_campaign_dates
from sync.models import Engine, MailAccount
from sync.services import banner_cache_key


@dataclass(frozen=True)
class Banner:
    level: str  # "due", "overdue" (after migrate-by) or "stopped" (after shutdown)
    migrate_by: date
    v2_shutdown: date
    accounts: list  # [(account id, address)]

    # The dates as the active language writes them (SHORT_DATE_FORMAT): the same two strings on every page
    # of every user, formatted once per process and language instead of by a template filter per page.
    @property
    def migrate_by_text(self) -> str:
        return short_date(self.migrate_by, get_language())

    @property
    def v2_shutdown_text(self) -> str:
        return short_date(self.v2_shutdown, get_language())


@functools.lru_cache(maxsize=64)
def short_date(value: date, language: str | None) -> str:
    """`value` in SHORT_DATE_FORMAT of `language` (the active one when the call is made: the key of the cache)."""
    return formats.date_format(value, "SHORT_DATE_FORMAT")


def _v2_accounts(user_id: int, cached: list | None) -> list:
    """[(account id, address)] of the user's V2 accounts, by address: `cached` (the cache's entry) or, when
    it is None, read and cached for BANNER_CACHE_SECONDS."""
    if cached is not None:
        return cached
    accounts = list(
        MailAccount.objects.filter(owner_id=user_id, engine=Engine.V2).order_by("address").values_list("pk", "address")
    )
    cache.set(banner_cache_key(user_id), accounts, settings.BANNER_CACHE_SECONDS)
    return accounts


def cache_keys(user_id) -> list[str]:
    """The cache keys banner_for() reads for the user with primary key `user_id` (int or str)."""
    return [banner_cache_key(user_id), CAMPAIGN_CACHE_KEY]


def banner_for(user, prefetched: dict | None = None) -> Banner | None:
    """The banner for `user`, or None (signed out, or no V2 account).

    `prefetched`: the cache entries of cache_keys() already read ({key: value}, missing ones absent), as
    portal.user_cache reads them with the user; without it one cache read, both entries in one round trip.
    """
    if not user.is_authenticated:
        return None
    key = banner_cache_key(user.pk)
    cached = prefetched if prefetched is not None else cache.get_many(cache_keys(user.pk))
    accounts = _v2_accounts(user.pk, cached.get(key))
    if not accounts:
        return None
    dates = cached.get(CAMPAIGN_CACHE_KEY) or current_campaign_dates()
    today = timezone.localdate()
    if today >= dates.v2_shutdown:
        level = "stopped"
    elif today > dates.migrate_by:
        level = "overdue"
    else:
        level = "due"
    return Banner(level, dates.migrate_by, dates.v2_shutdown, accounts)
