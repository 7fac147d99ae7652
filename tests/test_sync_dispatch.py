"""The fan-out at 5,000 accounts: the queue never holds more than SYNC_FANOUT_MAX runs, however slow the
workers, the longest-due accounts go first, and an account is never queued while it is queued or running.

Real PostgreSQL and the real Redis broker; the "worker" takes messages off the broker queue and holds each
account's lease as a run does (sync.leases), without a mail server.
"""

import base64
import json
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from portal.celery import app
from sync import leases
from sync.models import MailAccount
from sync.tasks import sync_all_accounts

pytestmark = pytest.mark.django_db(transaction=True)
ACCOUNTS = 5000
FANOUT_MAX = 300
BATCH = 200
TAKEN_PER_TICK = 40  # what the slow worker starts between two fan-outs


@pytest.fixture
def redis():
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        client.flushdb()
        yield client


@pytest.fixture
def many_accounts(user, settings):
    settings.SYNC_FANOUT_MAX = FANOUT_MAX
    settings.SYNC_FANOUT_BATCH = BATCH
    settings.SYNC_MAX_PER_DESTINATION = ACCOUNTS  # one server here: the global bound is what these tests show
    MailAccount.objects.bulk_create(
        MailAccount(owner=user, address=f"konto{n:05d}@firma.example", provider_kind="imap", engine="v3",
                    imap_host="imap.firma.example", imap_port=993, imap_security="ssl")
        for n in range(ACCOUNTS)
    )
    return list(MailAccount.objects.order_by("pk").values_list("pk", flat=True))


def take(redis, count: int) -> list[tuple[int, str]]:
    """What a worker does first: take up to `count` sync runs off the broker queue, oldest first."""
    taken = []
    for _ in range(count):
        raw = redis.rpop("celery")  # kombu pushes on the left, a worker takes from the right
        if raw is None:
            break
        message = json.loads(raw)
        assert message["headers"]["task"] == "sync.tasks.sync_account"
        args, _kwargs, _ = json.loads(base64.b64decode(message["body"]))
        taken.append((args[0], args[1]))
    return taken


def queued_ids(redis) -> list[int]:
    ids = []
    for raw in redis.lrange("celery", 0, -1):
        args, _kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.append(args[0])
    return ids


def test_the_queue_stays_bounded_behind_a_slow_worker_at_5000_accounts(many_accounts, redis):
    running: dict[int, str] = {}  # account id -> lease token of its run
    started = []
    for tick in range(8):
        with CaptureQueriesContext(connection) as queries:
            sync_all_accounts()
        assert len(queries.captured_queries) <= 12  # constant: a count, a claim, one UPDATE (and the V2 check)
        waiting = queued_ids(redis)
        # At most BATCH per fan-out, topped up to the bound, never beyond.
        assert len(waiting) + len(running) == min(FANOUT_MAX, (tick + 1) * BATCH)
        assert len(set(waiting)) == len(waiting) and not set(waiting) & running.keys()
        assert MailAccount.objects.filter(leases.in_flight(timezone.now())).count() == len(waiting) + len(running)
        # The slow worker: the runs it started at the last tick end now, it starts TAKEN_PER_TICK more.
        for account_id, token in running.items():
            assert leases.release(account_id, token)
        running.clear()
        for account_id, queued_at in take(redis, TAKEN_PER_TICK):
            token = leases.claim(account_id)
            assert token is not None  # nothing else runs this account
            assert leases.claim(account_id) is None  # and nothing can while it runs
            leases.clear_queued(account_id, datetime.fromisoformat(queued_at))
            running[account_id] = token
            started.append(account_id)
    assert len(started) == len(set(started)) == 8 * TAKEN_PER_TICK
    # Never queued accounts in order: the first 300 + 7 x 40 queued ones are the lowest ids.
    assert sorted(started) == many_accounts[: 8 * TAKEN_PER_TICK]


def test_it_queues_nothing_while_no_worker_takes_anything(many_accounts, redis):
    for tick in range(5):
        sync_all_accounts()
        assert redis.llen("celery") == min(FANOUT_MAX, (tick + 1) * BATCH)


def test_the_longest_due_go_first(many_accounts, redis, settings):
    settings.SYNC_FANOUT_MAX = settings.SYNC_FANOUT_BATCH = 3
    now = timezone.now()
    MailAccount.objects.update(sync_due_at=now + timedelta(minutes=5))  # all queued recently, none due
    overdue = {many_accounts[10]: 1, many_accounts[4000]: 30, many_accounts[2500]: 10, many_accounts[7]: 20}
    for account_id, minutes in overdue.items():
        MailAccount.objects.filter(pk=account_id).update(sync_due_at=now - timedelta(minutes=minutes))
    sync_all_accounts()
    assert list(reversed(queued_ids(redis))) == [many_accounts[4000], many_accounts[7], many_accounts[2500]]
