from datetime import datetime, timedelta

from django.conf import settings
from django.db import connections
from django.db.models import Count, F, Min, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from sync import leases
from sync.models import AccountStatus, Engine, MailAccount, ProviderKind, SyncedMessage


# Newest first, undated mail last (PostgreSQL sorts NULL first in descending order unless told).
NEWEST_FIRST = (F("received_at").desc(nulls_last=True), F("pk").desc())


def messages_for_user(user) -> "NewestFirst":
    """The user's messages, newest first: for Paginator (count(), slices) and the dashboard ([:5])."""
    return NewestFirst(list(MailAccount.objects.filter(owner=user).order_by("pk").values_list("pk", flat=True)))


class NewestFirst:
    """A user's messages across their accounts, newest first, read through the per-account index.

    The index (account, received_at DESC NULLS LAST, id DESC) (sync migration
    0009) gives each account's newest rows without a sort; one ORDER BY over
    all the user's accounts could not use it and sorted every message of the
    user on every view. So a slice [start:stop] takes each account's first
    `stop` rows from its index (one UNION ALL query), merges them, and loads
    the rows of the page (a second query): the first pages cost the same
    whatever the store's size. count() counts all of the user's messages.
    """

    def __init__(self, account_ids: list[int]):
        self.account_ids = account_ids

    def _rows(self):
        return SyncedMessage.objects.filter(account_id__in=self.account_ids)

    def count(self) -> int:
        return self._rows().count() if self.account_ids else 0

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, index):
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("NewestFirst takes slices only")
        start, stop = index.start or 0, index.stop
        if stop is None or start < 0 or stop < 0:
            raise ValueError("NewestFirst needs a bounded slice")
        if stop <= start or not self.account_ids:
            return []
        heads = [
            SyncedMessage.objects.filter(account_id=account_id).order_by(*NEWEST_FIRST)
            .values_list("received_at", "pk")[:stop]
            for account_id in self.account_ids
        ]
        if len(heads) > 1 and connections[SyncedMessage.objects.db].features.supports_slicing_ordering_in_compound:
            found = list(heads[0].union(*heads[1:], all=True))
        else:
            # SQLite (the embedded defaults) refuses LIMIT inside a UNION's parts: one query per account there.
            found = [row for head in heads for row in head]
        # Newest first, undated last, then the higher id (the same order as NEWEST_FIRST).
        found.sort(key=lambda row: (row[0] is not None, row[0].timestamp() if row[0] else 0, row[1]), reverse=True)
        page = [pk for _received, pk in found[start:stop]]
        rows = SyncedMessage.objects.select_related("account").in_bulk(page)
        return [rows[pk] for pk in page if pk in rows]


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


def sync_backlog(*, v2_running: bool, now: datetime | None = None) -> dict:
    """How far the sync is behind at `now`: {"due": accounts due and not yet queued, "queued": queued
    runs no worker has started, "running": runs under way, "oldest_due_seconds": whole seconds the
    longest due account has waited (0 when none is due)}.

    A growing "due" with "queued" + "running" at SYNC_FANOUT_MAX means the
    workers do not keep up (add worker processes); a large "due" with a
    small queue means destinations at their cap (SYNC_MAX_PER_DESTINATION).
    Two queries, through the index on sync_due_at.
    """
    now = now or timezone.now()
    due = accounts_due_for_sync(v2_running=v2_running, now=now).order_by().aggregate(
        n=Count("pk"), oldest=Min(Coalesce("sync_due_at", "created_at")))
    cutoff = now - timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT_SECONDS)
    running = Q(sync_lease_until__gt=now)
    flight = MailAccount.objects.order_by().aggregate(
        queued=Count("pk", filter=Q(sync_queued_at__gt=cutoff) & ~running), running=Count("pk", filter=running))
    oldest = max(0, int((now - due["oldest"]).total_seconds())) if due["oldest"] else 0
    return {"due": due["n"], "queued": flight["queued"], "running": flight["running"], "oldest_due_seconds": oldest}


def today():
    return timezone.localdate()
