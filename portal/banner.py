"""The orange deadline banner: which of the user's addresses still run on V2.

It is on every page, so it must cost no query on a typical request: the
per-user account list and the campaign dates are cached, and the services
that change an account's engine drop the user's entry.
"""

from dataclasses import dataclass
from datetime import date

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from migration.selectors import current_campaign_dates
from sync.models import Engine, MailAccount
from sync.services import banner_cache_key


@dataclass(frozen=True)
class Banner:
    level: str  # "due", "overdue" (after migrate-by) or "stopped" (after shutdown)
    migrate_by: date
    v2_shutdown: date
    accounts: list  # [(account id, address)]


def v2_accounts(user_id: int) -> list:
    key = banner_cache_key(user_id)
    accounts = cache.get(key)
    if accounts is None:
        accounts = list(
            MailAccount.objects.filter(owner_id=user_id, engine=Engine.V2).order_by("address").values_list("pk", "address")
        )
        cache.set(key, accounts, settings.BANNER_CACHE_SECONDS)
    return accounts


def banner_for(user) -> Banner | None:
    if not user.is_authenticated:
        return None
    accounts = v2_accounts(user.pk)
    if not accounts:
        return None
    dates = current_campaign_dates()
    today = timezone.localdate()
    if today >= dates.v2_shutdown:
        level = "stopped"
    elif today > dates.migrate_by:
        level = "overdue"
    else:
        level = "due"
    return Banner(level, dates.migrate_by, dates.v2_shutdown, accounts)
