"""Where an account's sync runs go, and the fan-out's fair turns across those destinations.

A destination is what one company's accounts share and what must not be
flooded: the IMAP host of a self-hosted server (or of a mail provider), the
EWS host of an Exchange on-premises server, one Microsoft 365 organisation, or
Google. The fan-out keeps at most SYNC_MAX_PER_DESTINATION accounts of one
destination queued or running (sync.runs.accounts_to_sync) and fills its batch
in turns across destinations, so one company of 1,000 accounts does not make
the others wait a whole interval. Within one run, Graph's 4 concurrent
requests per mailbox are kept by sync.microsoft.slots, not here.

The destination is computed in SQL from the account's columns (no column of
its own that every writer would have to keep right). A Microsoft 365
account's tenant id is only in its encrypted token cache, so the domain of its
address stands for the organisation: a tenant with several domains counts as
several destinations (its cap is that many times looser, never tighter).
"""

from django.db.models import Case, CharField, Count, F, Min, Q, QuerySet, Value, When, Window
from django.db.models.functions import Coalesce, Concat, Lower, RowNumber, StrIndex, Substr

from sync.models import Engine, ProviderKind

# Within one destination: never queued accounts first, then the longest due, then the least recently run.
DUE_ORDER = (F("sync_due_at").asc(nulls_first=True), F("sync_lease_until").asc(nulls_first=True), F("pk").asc())


def destination() -> Case:
    """A SQL expression (on MailAccount) for the account's destination, e.g. "imap:mail.firma.example",
    "ews:exchange.firma.example", "microsoft:firma.example" or "google" (lower case)."""
    domain = Substr(Lower("address"), StrIndex("address", Value("@")) + 1)
    # "https://host[:port]/EWS/Exchange.asmx" -> "host[:port]"
    after_scheme = Substr(Lower("ews_url"), StrIndex("ews_url", Value("://")) + 3)
    ews_host = Substr(after_scheme, 1, StrIndex(Concat(after_scheme, Value("/")), Value("/")) - 1)
    return Case(
        When(provider_kind=ProviderKind.GOOGLE, then=Value("google")),
        # V2 polled every kind over IMAP (sync.runs): there the IMAP host is the destination.
        When(Q(provider_kind=ProviderKind.MICROSOFT, engine=Engine.V3), then=Concat(Value("microsoft:"), domain)),
        When(Q(provider_kind=ProviderKind.EXCHANGE, engine=Engine.V3), then=Concat(Value("ews:"), ews_host)),
        default=Concat(Value("imap:"), Lower("imap_host")),
        output_field=CharField(),
    )


def in_flight_by_destination(in_flight: QuerySet) -> dict[str, int]:
    """{destination: accounts} of `in_flight` (accounts queued or running); one GROUP BY query."""
    rows = in_flight.order_by().annotate(dest=destination()).values("dest").annotate(n=Count("pk"))
    return dict(rows.values_list("dest", "n"))


def fair_turns(due: QuerySet, *, limit: int, cap: int, busy: dict[str, int]) -> list[int]:
    """Up to `limit` ids of `due` accounts in fair turns: each destination's longest due account
    first (destinations ordered by how long their oldest due account has waited), then each
    one's second, and so on; a destination takes at most `cap` minus its `busy` accounts.

    One query whatever the number of accounts: row_number() per destination
    in SQL, at most limit + sum(busy.values()) rows read (a destination's
    rows beyond its room are at most its busy count, so that many rows always
    hold `limit` usable ones when there are that many). Takes no locks.
    """
    if limit <= 0:
        return []
    ranked = (
        due.annotate(dest=destination())
        .annotate(
            turn=Window(RowNumber(), partition_by=[F("dest")], order_by=DUE_ORDER),
            # Never queued accounts have waited since they were created.
            waited_since=Window(Min(Coalesce("sync_due_at", "created_at")), partition_by=[F("dest")]),
        )
        .filter(turn__lte=cap)
        .order_by("turn", "waited_since", "dest")
        .values_list("pk", "dest", "turn")
    )
    chosen = []
    for pk, dest, turn in ranked[: limit + sum(busy.values())]:
        if turn <= cap - busy.get(dest, 0):
            chosen.append(pk)
            if len(chosen) == limit:
                break
    return chosen
