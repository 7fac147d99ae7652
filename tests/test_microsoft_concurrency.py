"""Graph's per-mailbox concurrency limit (4 requests in flight per app and mailbox), kept across threads and processes.

The fake answers a fifth request in flight for one mailbox with 429 ApplicationThrottled "MailboxConcurrency"
(tests/fakes/microsoft.py) and counts the most requests it saw in flight at once.
"""

import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from sync.microsoft import bodies, slots
from sync.models import GraphSlot, MailAccount, SyncedMessage
from sync.runs import sync_account
from sync.services import microsoft_tokens_of
from tests.fakes.microsoft_fixtures import fake_microsoft_server, microsoft, migrated, ms_account  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
# Another process of the portal (a worker, a web process) opening every message of the account twice.
READER = """
import os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django.setup()
from sync.microsoft.bodies import fetch_content
from sync.models import MailAccount, SyncedMessage
account = MailAccount.objects.get(pk=int(sys.argv[1]))
for _ in range(2):
    for message in SyncedMessage.objects.filter(account=account):
        fetch_content(account, message)
print("read")
"""


def _process_environment(settings) -> dict:
    db = connection.settings_dict
    keys = settings.ENCRYPTION_KEYS or [
        line.strip() for line in settings.ENCRYPTION_KEY_FILE.read_text().splitlines() if line.strip()
    ]
    return dict(
        os.environ, DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        ENCRYPTION_KEYS=",".join(keys), MS_CLIENT_ID=settings.MS_CLIENT_ID, MS_CLIENT_SECRET=settings.MS_CLIENT_SECRET,
        MS_AUTHORITY=settings.MS_AUTHORITY, MS_GRAPH_URL=settings.MS_GRAPH_URL, MS_INSTANCE_DISCOVERY="false",
        MS_CA_FILE=settings.MS_CA_FILE, MS_GRAPH_MAILBOX_CONCURRENCY=str(settings.MS_GRAPH_MAILBOX_CONCURRENCY),
    )


def test_it_never_has_more_than_four_requests_in_flight_for_one_mailbox(migrated, microsoft, settings):
    assert connection.vendor == "postgresql"
    address = migrated.address
    for number in range(6):
        microsoft.set_content(microsoft.deliver(address, subject=f"Nachricht {number}"), text=f"Text {number}")
    assert sync_account(migrated.pk) == 6
    microsoft.graph_delay = 0.15  # every request stays in flight a while, so that they overlap
    errors, results = [], []

    def read_all():
        try:
            account = MailAccount.objects.get(pk=migrated.pk)
            for message in SyncedMessage.objects.filter(account=account):
                results.append(bodies.fetch_content(account, message).text)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    def sync_again():
        try:
            microsoft.deliver(address, subject="während der Leser")
            results.append(sync_account(migrated.pk))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    processes = [subprocess.Popen([sys.executable, "-c", READER, str(migrated.pk)], cwd=ROOT,
                                  env=_process_environment(settings), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    threads = [threading.Thread(target=read_all) for _ in range(4)] + [threading.Thread(target=sync_again)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outputs = [process.communicate(timeout=120) for process in processes]
    assert not errors
    assert [out.strip() for out, _ in outputs] == ["read", "read"], outputs
    assert sorted(r for r in results if isinstance(r, str)) == sorted([f"Text {n}" for n in range(6)] * 4)
    assert microsoft.graph_concurrency_refused == {}  # Graph never had to say "MailboxConcurrency"
    assert 2 <= microsoft.graph_max_in_flight[address] <= 4
    assert not GraphSlot.objects.exclude(holder="").exists()  # every slot given back
    assert MailAccount.objects.get(pk=migrated.pk).last_sync_error == ""


def test_a_lower_setting_keeps_fewer_requests_in_flight(migrated, microsoft, settings):
    settings.MS_GRAPH_MAILBOX_CONCURRENCY = 1
    for number in range(3):
        microsoft.set_content(microsoft.deliver(migrated.address, subject=f"N{number}"), text="x")
    sync_account(migrated.pk)
    microsoft.graph_delay = 0.1
    microsoft.graph_max_in_flight.clear()
    account = MailAccount.objects.get(pk=migrated.pk)

    def read_all():
        for message in SyncedMessage.objects.filter(account=account):
            bodies.fetch_content(account, message)
        connection.close()

    threads = [threading.Thread(target=read_all) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert microsoft.graph_max_in_flight[migrated.address] == 1


def _hold_every_slot(account, *, until):
    key = slots.mailbox_key(microsoft_tokens_of(account)["home_account_id"])
    GraphSlot.objects.bulk_create([GraphSlot(mailbox=key, slot=n) for n in range(4)], ignore_conflicts=True)
    GraphSlot.objects.filter(mailbox=key).update(holder="killed", expires_at=until)


def test_the_slots_of_a_killed_process_expire(migrated, microsoft, settings):
    microsoft.deliver(migrated.address, subject="nach dem Absturz")
    _hold_every_slot(migrated, until=timezone.now() - timedelta(seconds=1))  # its holder died a while ago
    assert sync_account(migrated.pk) == 1
    assert MailAccount.objects.get(pk=migrated.pk).last_sync_error == ""


def test_it_waits_a_bounded_time_for_a_slot_and_says_why(migrated, microsoft, settings):
    settings.MS_TIMEOUT = 1  # the wait for a slot is bounded by 2 x MS_TIMEOUT
    microsoft.deliver(migrated.address, subject="später")
    _hold_every_slot(migrated, until=timezone.now() + timedelta(minutes=5))
    before = len(microsoft.graph_requests())
    assert sync_account(migrated.pk) == 0
    assert MailAccount.objects.get(pk=migrated.pk).last_sync_error == "ms_mailbox_busy"
    assert len(microsoft.graph_requests()) == before  # nothing went to Graph
    GraphSlot.objects.update(holder="", expires_at=None)
    assert sync_account(migrated.pk) == 1
