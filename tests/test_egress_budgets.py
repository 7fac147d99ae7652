"""Attempt budgets (sync.egress.check_rate): per user, and per destination keyed by what is really contacted.

Names are resolved through the `hosts` fixture (a fake getaddrinfo), so no
question leaves the machine. The last test runs several processes on the
embedded default (SQLite, no Redis, a per-process memory cache) and shows
that they share one budget.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from sync.egress import RateLimited, check_rate, destination_keys
from sync.models import AttemptBudget
from tests.fakes.fixtures import hosts  # noqa: F401

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = "203.0.113.7"
# One machine, every way a user could name it.
SPELLINGS = [
    "203.0.113.7", "0xcb007107", "[203.0.113.7]", "3405803783", "0313.0.0161.07", "203.0.28935",
    "::ffff:203.0.113.7", "[::ffff:cb00:7107]", "0:0:0:0:0:ffff:cb00:7107", "64:ff9b::203.0.113.7",
    "2002:cb00:7107::1", "mail.example.com", "Mail.Example.COM.", "imap.alias.example.net", "v6only.example.org",
]
PORTS = [993, 143, 443, 25, 587, 8443]
# What each of the processes tries: names, literals, mapped forms.
PROCESS_SPELLINGS = ["203.0.113.7", "mail.example.com", "::ffff:203.0.113.7", "imap.alias.example.net", "0xcb007107"]


@pytest.fixture
def names(hosts):  # noqa: F811
    hosts["mail.example.com"] = ADDRESS
    hosts["imap.alias.example.net"] = ADDRESS
    hosts["v6only.example.org"] = "::ffff:203.0.113.7"
    return hosts


def test_it_limits_attempts_per_user(settings, names):
    settings.EGRESS_RATE_PER_USER, settings.EGRESS_RATE_PER_DESTINATION = 3, 100
    for port in (993, 994, 995):
        check_rate(7, "mail.example.com", port)
    with pytest.raises(RateLimited) as error:
        check_rate(7, "198.51.100.9", 993)
    assert error.value.code == "rate_limited"
    check_rate(8, "mail.example.com", 993)  # another user is not affected


def test_one_destination_in_every_spelling_name_and_port_has_one_budget(settings, names):
    settings.EGRESS_RATE_PER_USER, settings.EGRESS_RATE_PER_DESTINATION = 100, 5
    allowed, refused = [], []
    for user_id, spelling in enumerate(SPELLINGS):
        port = PORTS[user_id % len(PORTS)]
        try:
            check_rate(user_id, spelling, port)
            allowed.append((spelling, port))
        except RateLimited:
            refused.append((spelling, port))
    assert len(allowed) == 5 and len(refused) == len(SPELLINGS) - 5
    assert {tuple(destination_keys(spelling, 993)) for spelling in SPELLINGS} == {(ADDRESS,)}
    check_rate(999, "198.51.100.9", 993)  # another machine has its own budget


def test_a_name_with_several_addresses_is_charged_on_each(settings, names):
    settings.EGRESS_RATE_PER_USER, settings.EGRESS_RATE_PER_DESTINATION = 100, 2
    names["pool.example.com"] = ["198.51.100.2", ADDRESS]
    check_rate(1, ADDRESS, 993)
    check_rate(2, ADDRESS, 143)
    with pytest.raises(RateLimited):
        check_rate(3, "pool.example.com", 993)  # one of its addresses is used up: resolve_checked may pick it
    assert destination_keys("pool.example.com", 993) == ["198.51.100.2", ADDRESS]


def test_ipv6_addresses_of_one_64_share_a_budget(settings, names):
    settings.EGRESS_RATE_PER_USER, settings.EGRESS_RATE_PER_DESTINATION = 100, 2
    check_rate(1, "2001:db8:1:2::10", 993)
    check_rate(2, "[2001:DB8:1:2:0:0:0:20]", 993)
    with pytest.raises(RateLimited):
        check_rate(3, "2001:db8:1:2:ffff::1", 443)
    check_rate(4, "2001:db8:1:3::10", 993)  # the next /64 is another network


def test_a_name_that_does_not_resolve_is_counted_by_its_name(settings, names):
    settings.EGRESS_RATE_PER_USER, settings.EGRESS_RATE_PER_DESTINATION = 100, 1

    def nxdomain():
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    names["gone.example.com"] = nxdomain
    check_rate(1, "gone.example.com", 993)
    with pytest.raises(RateLimited):
        check_rate(2, "GONE.example.com.", 143)
    assert destination_keys("gone.example.com", 993) == ["name:gone.example.com"]


def test_the_big_providers_have_no_shared_budget_and_are_not_resolved(settings, names):
    settings.EGRESS_RATE_PER_USER, settings.EGRESS_RATE_PER_DESTINATION = 100, 2
    for user_id in range(10):
        check_rate(user_id, "imap.gmx.net", 993)  # a deadline rush at GMX locks nobody out
    assert "imap.gmx.net" not in names.lookups
    settings.EGRESS_RATE_PER_USER = 1
    with pytest.raises(RateLimited):
        check_rate(1, "imap.gmx.net", 993)  # the per-user limit still holds


def test_it_does_not_charge_the_destination_for_a_user_over_the_limit(settings, names):
    settings.EGRESS_RATE_PER_USER, settings.EGRESS_RATE_PER_DESTINATION = 1, 2
    check_rate(1, "mail.example.com", 993)
    for _ in range(5):
        with pytest.raises(RateLimited):
            check_rate(1, "mail.example.com", 993)
    check_rate(2, "mail.example.com", 993)  # the spraying user did not use up everyone's budget


def test_an_international_name_shares_its_budget_with_its_ascii_form(settings, names):
    settings.EGRESS_RATE_PER_USER, settings.EGRESS_RATE_PER_DESTINATION = 100, 1
    names["mail.xn--bcher-kva.de"] = "198.51.100.77"
    check_rate(1, "mail.bücher.de", 993)
    with pytest.raises(RateLimited):
        check_rate(2, "mail.xn--bcher-kva.de", 993)


def test_rows_of_old_windows_are_deleted_when_a_new_window_starts(settings, names, monkeypatch):
    check_rate(1, ADDRESS, 993)
    assert AttemptBudget.objects.count() == 2  # the user's and the destination's
    later = time.time() + 3 * 600
    monkeypatch.setattr(time, "time", lambda: later)
    check_rate(1, ADDRESS, 993)
    assert AttemptBudget.objects.count() == 2 and set(AttemptBudget.objects.values_list("attempts", flat=True)) == {1}


@pytest.mark.django_db(transaction=True)
def test_it_counts_attempts_from_many_threads_exactly(settings):
    settings.EGRESS_RATE_PER_USER, settings.EGRESS_RATE_PER_DESTINATION = 1000, 25
    refused = []

    def attempt(user_id):
        try:
            check_rate(user_id, "0xcb007107" if user_id % 2 else ADDRESS, 993 + user_id % 3)
        except RateLimited:
            refused.append(user_id)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(refused) == 15


# --- several processes on the embedded default ----------------------------------------------------------------

_ATTEMPTS = """
import json, os, socket, time
from pathlib import Path
from django.conf import settings
from sync.egress import RateLimited, check_rate

real = socket.getaddrinfo
names = {"mail.example.com": "203.0.113.7", "imap.alias.example.net": "203.0.113.7"}
socket.getaddrinfo = lambda host, *a, **k: real(names.get(host, host), *a, **k)
go = Path(os.environ["GO_FILE"])
while not go.exists():
    time.sleep(0.01)
spellings = json.loads(os.environ["SPELLINGS"])
ports = json.loads(os.environ["PORTS"])
worker = int(os.environ["WORKER"])
allowed = refused = 0
for n, spelling in enumerate(spellings):
    try:
        check_rate(worker * 100 + n, spelling, ports[(worker + n) % len(ports)])
        allowed += 1
    except RateLimited:
        refused += 1
print(json.dumps({"allowed": allowed, "refused": refused, "cache": settings.CACHES["default"]["BACKEND"],
                  "db": settings.DATABASES["default"]["ENGINE"]}))
"""


def _embedded_environment(data_dir: str, **extra) -> dict:
    """The environment of ./scripts/run: no DATABASE_URL, no REDIS_URL, a data folder of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    return {**env, "PORTAL_DATA_DIR": data_dir, "EGRESS_RATE_PER_USER": "100", "EGRESS_RATE_PER_DESTINATION": "6",
            **extra}


def test_processes_without_redis_share_one_budget():
    data_dir = tempfile.mkdtemp(prefix="budgets-")
    env = _embedded_environment(data_dir)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True,
                   timeout=300)
    go = Path(data_dir) / "go"
    try:
        _count_in_processes(env, go)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _count_in_processes(env: dict, go: Path) -> None:
    workers = [
        subprocess.Popen([sys.executable, "manage.py", "shell", "-c", _ATTEMPTS], cwd=ROOT, stdout=subprocess.PIPE,
                         env={**env, "GO_FILE": str(go), "WORKER": str(n), "SPELLINGS": json.dumps(PROCESS_SPELLINGS),
                              "PORTS": json.dumps(PORTS)})
        for n in range(4)
    ]
    go.touch()  # all four start counting at about the same moment
    results = [json.loads(worker.communicate(timeout=300)[0].decode().strip().splitlines()[-1]) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers)
    # What the embedded default runs on: no Redis (today a per-process memory cache), SQLite.
    assert not any("redis" in r["cache"].lower() for r in results)
    assert {r["db"] for r in results} == {"django.db.backends.sqlite3"}
    assert sum(r["allowed"] for r in results) == 6
    assert sum(r["refused"] for r in results) == 4 * 5 - 6
