"""Per-destination caps and fair turns in the fan-out (sync.destinations), on real PostgreSQL and Redis.

A destination is one mail server, one Microsoft 365 organisation or Google: at
most SYNC_MAX_PER_DESTINATION of its accounts are queued or running, and a
company with 1,000 accounts due does not keep the others waiting for its turn.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from portal.celery import app
from sync import destinations, leases
from sync.models import MailAccount
from sync.runs import accounts_to_sync

pytestmark = pytest.mark.django_db(transaction=True)
CAP = 20


@pytest.fixture
def redis():
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        client.flushdb()
        yield client


def accounts(owner, count: int, *, prefix: str, waited_minutes: int, **fields) -> list[int]:
    """`count` V3 accounts of one destination, due since `waited_minutes` ago."""
    fields = {"provider_kind": "imap", "imap_port": 993, "imap_security": "ssl", **fields}
    due = timezone.now() - timedelta(minutes=waited_minutes)
    made = MailAccount.objects.bulk_create(
        MailAccount(owner=owner, address=f"{prefix}{n:05d}@{prefix}.example", engine="v3", sync_due_at=due, **fields)
        for n in range(count)
    )
    return [account.pk for account in made]


def by_destination(ids) -> dict[str, int]:
    rows = MailAccount.objects.filter(pk__in=ids).annotate(dest=destinations.destination())
    counts = {}
    for dest in rows.values_list("dest", flat=True):
        counts[dest] = counts.get(dest, 0) + 1
    return counts


def test_it_names_each_kind_of_destination(user):
    made = {
        "imap": dict(provider_kind="imap", engine="v3", imap_host="IMAP.Firma.example"),
        "google": dict(provider_kind="google", engine="v3", imap_host="imap.gmail.com"),
        "microsoft": dict(provider_kind="microsoft", engine="v3", address="Anna@Kunde.Example"),
        "exchange": dict(provider_kind="exchange", engine="v3",
                         ews_url="https://Mail.Kunde.example:8443/EWS/Exchange.asmx"),
        "exchange-bare": dict(provider_kind="exchange", engine="v3", ews_url="https://ews.kunde.example"),
        "v2-microsoft": dict(provider_kind="microsoft", engine="v2", imap_host="outlook.office365.com"),
    }
    ids = {}
    for name, fields in made.items():
        fields.setdefault("address", f"{name}@example.com")
        ids[name] = MailAccount.objects.create(owner=user, **fields).pk
    names = dict(MailAccount.objects.annotate(dest=destinations.destination()).values_list("pk", "dest"))
    assert {name: names[pk] for name, pk in ids.items()} == {
        "imap": "imap:imap.firma.example",
        "google": "google",
        "microsoft": "microsoft:kunde.example",
        "exchange": "ews:mail.kunde.example:8443",
        "exchange-bare": "ews:ews.kunde.example",
        "v2-microsoft": "imap:outlook.office365.com",  # V2 polled it over IMAP
    }


def test_three_destinations_share_the_first_batch_and_none_passes_its_cap(user, redis, settings):
    settings.SYNC_MAX_PER_DESTINATION = CAP
    settings.SYNC_FANOUT_BATCH = 30
    settings.SYNC_FANOUT_MAX = 500
    big = accounts(user, 1000, prefix="gross", waited_minutes=30, imap_host="imap.gross.example")
    exchange = accounts(user, 6, prefix="ews", waited_minutes=2, provider_kind="exchange",
                        ews_url="https://exchange.klein.example/EWS/Exchange.asmx")
    microsoft = accounts(user, 6, prefix="ms", waited_minutes=1, provider_kind="microsoft")

    first = accounts_to_sync()
    assert len(first) == 30
    # Turns: the longest waiting destination first, then the others, then each one's second account...
    assert [first[0], first[1], first[2]] == [big[0], exchange[0], microsoft[0]]
    assert set(exchange) | set(microsoft) <= set(first)  # the small ones need not wait behind 1,000
    assert by_destination(first) == {"imap:imap.gross.example": 18, "ews:exchange.klein.example": 6,
                                     "microsoft:ms.example": 6}
    # Within the big destination, in its due order.
    assert [pk for pk in first if pk in set(big)] == big[:18]

    second = accounts_to_sync()
    assert by_destination(second) == {"imap:imap.gross.example": CAP - 18}  # topped up to the cap, no more
    assert accounts_to_sync() == []  # the cap holds while its runs are queued

    # Runs of the big destination start and end: its room comes back, one per ended run.
    running = first[:5]
    for pk in running:
        leases.clear_queued(pk, MailAccount.objects.get(pk=pk).sync_queued_at)
    tokens = {pk: leases.claim(pk) for pk in running}
    assert accounts_to_sync() == []  # running counts like queued
    for pk, token in tokens.items():
        assert leases.release(pk, token)
    third = accounts_to_sync()
    queued_big = {pk for pk in first + second if pk in set(big)} - set(running)
    assert by_destination(third) == {"imap:imap.gross.example": sum(1 for pk in running if pk in set(big))}
    assert MailAccount.objects.filter(leases.in_flight(timezone.now()), pk__in=big).count() == CAP
    assert len(queued_big) + len(third) <= CAP


def test_the_cap_holds_at_5000_accounts_on_25_servers_behind_a_slow_worker(user, redis, settings):
    settings.SYNC_MAX_PER_DESTINATION = CAP
    settings.SYNC_FANOUT_BATCH = 200
    settings.SYNC_FANOUT_MAX = 300
    for server in range(25):
        accounts(user, 200, prefix=f"s{server:02d}x", waited_minutes=60 - server, imap_host=f"imap{server}.example")
    in_flight, ever = set(), set()
    for tick in range(6):
        queued = accounts_to_sync()
        if tick == 0:
            assert len(by_destination(queued)) == 25  # every server has its turn in the first batch
        ever |= set(queued)
        in_flight |= set(queued)
        counts = by_destination(in_flight)
        assert max(counts.values()) <= CAP
        assert len(in_flight) == 300 if tick else len(in_flight) == 200
        assert MailAccount.objects.filter(leases.in_flight(timezone.now())).count() == len(in_flight)
        # The slow worker ends 30 runs per tick (the oldest ones).
        ended = sorted(in_flight)[:30]
        MailAccount.objects.filter(pk__in=ended).update(sync_queued_at=None, sync_lease_until=timezone.now(),
                                                        sync_due_at=timezone.now() + timedelta(hours=1))
        in_flight -= set(ended)
    assert len(by_destination(ever)) == 25


def test_a_fan_out_costs_the_same_queries_for_100_and_for_3000_accounts(user, redis, settings):
    settings.SYNC_MAX_PER_DESTINATION = CAP
    settings.SYNC_FANOUT_BATCH = settings.SYNC_FANOUT_MAX = 50

    def queries_of_one_fan_out() -> int:
        MailAccount.objects.update(sync_queued_at=None, sync_due_at=None)
        with CaptureQueriesContext(connection) as queries:
            assert len(accounts_to_sync()) == 50
        return len(queries.captured_queries)

    for server in range(10):
        accounts(user, 10, prefix=f"a{server}x", waited_minutes=5, imap_host=f"klein{server}.example")
    queries_of_one_fan_out()  # the first one also creates the campaign row the V2 check reads
    few = queries_of_one_fan_out()
    for server in range(100):
        accounts(user, 29, prefix=f"b{server:03d}x", waited_minutes=5, imap_host=f"gross{server}.example")
    assert MailAccount.objects.count() == 3000
    assert queries_of_one_fan_out() == few <= 10
