from datetime import datetime

from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from sync import leases
from sync.models import AccountStatus, Engine, MailAccount, ProviderKind, SyncedMessage


def messages_for_user(user) -> QuerySet:
    # PostgreSQL sorts NULL first in descending order: undated mail goes last.
    return SyncedMessage.objects.filter(account__owner=user).select_related("account").order_by(
        F("received_at").desc(nulls_last=True), "-pk"
    )


def accounts_for_user(user) -> QuerySet:
    """The user's accounts, each with skipped_count: messages the sync could not take over (one query)."""
    return MailAccount.objects.filter(owner=user).annotate(skipped_count=Count("skipped_messages")).order_by("address")


def accounts_due_for_sync(*, v2_running: bool, now: datetime | None = None) -> QuerySet:
    """Accounts the fan-out may queue a sync run for at `now` (default: the current time).

    Leaves out accounts whose run is under way (lease held), already queued by
    the fan-out or queued by it less than an interval ago (sync.leases), stopped
    ones, and V2 accounts once V2 is off.
    """
    now = now or timezone.now()
    engines = [Engine.V3, Engine.V2] if v2_running else [Engine.V3]
    # Microsoft and Exchange accounts on V3 sync through Graph and EWS: they
    # need no IMAP host. An account waiting to be re-connected has no grant.
    return (
        MailAccount.objects.filter(leases.lease_free(now), leases.not_queued(now), leases.due(now), engine__in=engines)
        .exclude(status__in=[AccountStatus.STOPPED, AccountStatus.RECONNECT])
        .exclude(Q(imap_host="") & ~Q(provider_kind__in=[ProviderKind.MICROSOFT, ProviderKind.EXCHANGE],
                                      engine=Engine.V3))
    )


def today():
    return timezone.localdate()
