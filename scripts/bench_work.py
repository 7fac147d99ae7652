"""Benchmark: migrations, the scheduler with real workers, and the web pages; prints a table.

    .venv/bin/python scripts/bench_work.py [--quick]

(./scripts/bench runs it after scripts/bench_sync.py.) Starts its own
PostgreSQL, Redis, Dovecot and a quiet nameserver on 127.0.0.1, then:
- web: gunicorn with 2 workers; 4 client processes request, for a few seconds
  each, a hello-world view (same middleware, no template, no query), the
  settings page of a user with 3 V3 accounts, and the same page of a user with
  3 V2 accounts (the orange banner shown): req/s, the page's ratio to
  hello-world, the banner's cost per request, gunicorn worker RSS;
- migrations: a celery worker with 2 processes (prefork) takes N migrations
  started at once (1-folder and 20-folder mailboxes): per migration the time
  the worker needs (start to the login form, plus credentials to done; the
  user's own time left out), p50/p95, and migrations per minute;
- scheduler: 1,000 and 5,000 V3 accounts (150 and 600 with --quick), each due
  once per 20 s (10 s), the fan-out called every 0.5 s by this process (the
  beat's job) and the same worker syncing, for 3 (2) intervals: accounts synced
  per second in each interval, the longest broker queue seen, worker RSS.
Wall-clock figures belong here, never in the tests; on a shared machine they
are noisy (compare ratios taken in one run).
"""

import argparse
import http.client
import logging
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer migrations and accounts, shorter web runs")
    args = parser.parse_args()
    small, big, seconds = (8, 3, 4) if args.quick else (20, 6, 8)
    counts, interval, intervals = ((150, 600), 10, 2) if args.quick else ((1000, 5000), 20, 3)

    from portal.devservers import Dovecot, Postgres, Redis
    from tests.fakes.dns import FakeDNS

    postgres, redis_server = Postgres().start(), Redis().start()
    dovecot = Dovecot({}, pool_size=small + big + 3).start()
    dns = FakeDNS().start()
    worker = web = None
    try:
        bench_environment(
            postgres, redis_server, dovecot, DNS_NAMESERVERS=dns.nameserver, DNS_TIMEOUT="1",
            # The scheduler rows: every account due once per interval (the adaptive interval pinned), and no
            # per-destination cap (all the bench's accounts are on one Dovecot; the cap has its own tests).
            SYNC_INTERVAL_SECONDS=str(interval), SYNC_INTERVAL_MIN_SECONDS=str(interval),
            SYNC_INTERVAL_MAX_SECONDS=str(interval), SYNC_MAX_PER_DESTINATION="1000000",
        )
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        rows = []
        log = open(postgres.base / "worker.log", "w")  # the worker's own log stays out of the table
        logging.disable(logging.INFO)  # the state changes this process logs, likewise
        web = _gunicorn()
        _web(web, rows, seconds)
        _stop(web)
        web = None
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool=prefork", "--concurrency=2",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING"],
            cwd=ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        _migrations(dovecot, [], 1, 1)  # warm-up: the worker's processes start and connect; not counted
        _migrations(dovecot, rows, small, 1)
        _migrations(dovecot, rows, big, 20)
        _scheduler(dovecot, redis_server, rows, counts, interval, intervals)
        rows.append(("celery worker RSS after the runs (main + 2 processes)", _rss(worker.pid)))
        print()
        print(f"| {'figure':<62} | {'value':>42} |")
        print(f"|{'-' * 64}|{'-' * 44}|")
        for name, value in rows:
            print(f"| {name:<62} | {value:>42} |")
    finally:
        for process in (worker, web):
            if process is not None:
                _stop(process)
        dns.stop()
        dovecot.stop()
        redis_server.stop()
        postgres.stop()


def bench_environment(postgres, redis_server, dovecot, **extra: str) -> None:
    """Point this process (and the servers it starts, which inherit os.environ) at the bench's own
    PostgreSQL, Redis and Dovecot, with a campaign under way; `extra`: more settings."""
    today = date.today()
    os.environ.update(
        PORTAL_DATA_DIR=str(postgres.base / "portal-data"),  # never the user's own data
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{postgres.port}/postgres",
        REDIS_URL=redis_server.url, CELERY_BROKER_URL=redis_server.url,
        EGRESS_ALLOW_NETWORKS="127.0.0.1/32", MAIL_TLS_CA_FILE=str(dovecot.cert_path),
        CAMPAIGN_MIGRATE_BY=(today + timedelta(days=14)).isoformat(),
        CAMPAIGN_V2_SHUTDOWN=(today + timedelta(days=30)).isoformat(),
        DJANGO_SETTINGS_MODULE="portal.settings", **extra,
    )


def _stop(process) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _rss(pid: int) -> str:
    """VmRSS of a process and its children, in MB, as "main + child + child"."""
    def rss(one: int) -> float:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(one) for one in children.read_text().split()] if children.exists() else []
    return " + ".join(f"{rss(one):.0f}" for one in [pid, *kids]) + " MB"


# --- web ------------------------------------------------------------------------------------------

def _gunicorn():
    from portal.devservers import free_port, wait_for_port

    port = free_port()
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="bench_web_settings")
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "portal.wsgi:application", "--pythonpath", str(ROOT / "scripts"),
         "--workers", "2", "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True)
    wait_for_port(port)
    process.port = port
    return process


def _client(port: int, path: str, cookie: str, seconds: float, results) -> None:
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        connection = _connection(port)
        connection.request("GET", path, headers={"Cookie": cookie})
        response = connection.getresponse()
        response.read()
        connection.close()
        if response.status != 200:
            raise SystemExit(f"{path}: HTTP {response.status}")
        done += 1
    results.put(done)


def _connection(port: int) -> http.client.HTTPConnection:
    """A connection that ends with a reset, leaving no TIME_WAIT behind. gunicorn's sync workers close every
    connection; at thousands per second the 60 s TIME_WAITs filled the loopback's ephemeral ports and
    each later connect() searched longer, so whichever figure ran last came out up to a third slower."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.connect()
    connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return connection


def _csrf_cookie(port: int, path: str, cookie: str) -> str:
    """"csrftoken=..." as the page at `path` sets it."""
    connection = _connection(port)
    connection.request("GET", path, headers={"Cookie": cookie})
    response = connection.getresponse()
    response.read()
    connection.close()
    for header, value in response.getheaders():
        if header.lower() == "set-cookie" and value.startswith("csrftoken="):
            return value.split(";", 1)[0]
    raise SystemExit(f"{path}: no CSRF cookie set (HTTP {response.status})")


def _rate(port: int, path: str, cookie: str, seconds: float, clients: int = 4) -> float:
    results = multiprocessing.get_context("fork").Queue()
    processes = [multiprocessing.get_context("fork").Process(target=_client, args=(port, path, cookie, seconds, results))
                 for _ in range(clients)]
    for process in processes:
        process.start()
    total = sum(results.get(timeout=seconds + 60) for _ in processes)
    for process in processes:
        process.join()
    return total / seconds


WEB_SLICES = 4  # slices per web figure (see _web)


def _web(web, rows, seconds) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from sync.models import MailAccount

    cookies, users = {}, {}
    for engine in ("v3", "v2"):
        user = get_user_model().objects.create_user(username=f"web-{engine}@bench.example",
                                                    email=f"web-{engine}@bench.example")
        for number in range(3):
            MailAccount.objects.create(owner=user, address=f"web-{engine}-{number}@firma.example",
                                       provider_kind="imap", engine=engine, imap_host="imap.firma.example")
        users[engine] = user
        client = Client()
        client.force_login(user)
        cookies[engine] = f"sessionid={client.cookies['sessionid'].value}"
        # And the CSRF cookie the first page sets, as a browser sends it back: without it every page would
        # mint a new CSRF secret.
        cookies[engine] += "; " + _csrf_cookie(web.port, "/einstellungen/email-synchronisierung/", cookies[engine])
    page = "/einstellungen/email-synchronisierung/"
    # Interleaved in short slices, each rate the mean over its slices: a shared machine's speed drifts
    # over seconds, and three back-to-back runs made the ratios swing by a third between runs.
    runs = {"hello": ("/bench/hello/", cookies["v3"]), "v3": (page, cookies["v3"]), "v2": (page, cookies["v2"])}
    for path, cookie in runs.values():
        # Warm-up, each figure in both workers: templates compiled, caches filled, statements prepared.
        _rate(web.port, path, cookie, 1)
    totals = dict.fromkeys(runs, 0.0)
    for _ in range(WEB_SLICES):
        for name, (path, cookie) in runs.items():
            totals[name] += _rate(web.port, path, cookie, seconds / WEB_SLICES) / WEB_SLICES
    hello, plain, banner = totals["hello"], totals["v3"], totals["v2"]
    rows.append(("web: hello-world view, gunicorn 2 workers, 4 clients", f"{hello:.0f} req/s"))
    rows.append(("web: settings page, 3 V3 accounts", f"{plain:.0f} req/s, {plain / hello:.3f} x hello-world"))
    rows.append(("web: settings page, 3 V2 accounts (banner, 3 forms)", f"{banner:.0f} req/s, {banner / hello:.3f} x hello-world"))
    rows.append(("banner overhead per page (warm cache, in-process, CPU)", _banner_cost(users["v2"], users["v3"])))
    rows.append(("gunicorn RSS after the runs (master + 2 workers)", _rss(web.pid)))


def _banner_cost(with_banner, without) -> str:
    """CPU per page of the banner: the context processor's lookups (Redis) and its template, 500 times."""
    from django.template.loader import get_template
    from django.test import RequestFactory

    from portal.context_processors import banner

    template = get_template("partials/banner.html")
    costs = {}
    for label, user in (("shown", with_banner), ("none", without)):
        request = RequestFactory().get("/")
        request.user = user
        template.render(banner(request), request)  # fills the caches
        started = time.process_time()
        for _ in range(500):
            template.render(banner(request), request)
        costs[label] = (time.process_time() - started) / 500 * 1e6
    return f"{costs['shown']:.0f} us shown, {costs['none']:.0f} us none"


# --- migrations -----------------------------------------------------------------------------------

def _migrations(dovecot, rows, count: int, folders: int) -> None:
    from django.contrib.auth import get_user_model

    from migration import services
    from migration.models import Migration
    from portal.devservers import make_message
    from sync import crypto
    from sync.imap.client import ImapSettings
    from sync.models import FolderState, MailAccount

    started, waiting, submitted, done, passwords = {}, {}, {}, {}, {}
    accounts = []
    for number in range(count):
        address, password = dovecot.take_mailbox()
        client = dovecot.client(address)
        client.append("INBOX", make_message(subject="im Posteingang"))
        for folder in range(1, folders):
            client.create_folder(f"Ordner {folder:02d}")
        client.logout()
        user = get_user_model().objects.create_user(username=address, email=address)
        account = MailAccount.objects.create(
            owner=user, address=address, provider_kind="imap", engine="v2", imap_host="127.0.0.1",
            imap_port=dovecot.tls_port, imap_security="ssl", username=address,
            secret_encrypted=crypto.encrypt_json({"password": password}))
        FolderState.objects.create(account=account, name="INBOX")  # V2's row
        accounts.append((user, account))
        passwords[account.pk] = (address, password)
    for user, account in accounts:
        migration = services.start_migration(user=user, account=account)
        started[migration.pk] = time.perf_counter()
    deadline = time.perf_counter() + 300
    while len(done) < count and time.perf_counter() < deadline:
        for migration in Migration.objects.filter(pk__in=list(started)).exclude(pk__in=list(done)):
            now = time.perf_counter()
            if migration.status == "awaiting_user" and migration.pk not in waiting:
                waiting[migration.pk] = now
                address, password = passwords[migration.account_id]
                services.submit_imap_credentials(
                    migration=migration, actor="bench", password=password,
                    server=ImapSettings("127.0.0.1", dovecot.tls_port, "ssl", address))
                submitted[migration.pk] = time.perf_counter()
            elif migration.status in ("done", "failed"):
                done[migration.pk] = (now, migration.status, migration.error_code)
        time.sleep(0.02)
    failed = [value for value in done.values() if value[1] != "done"]
    if len(done) < count or failed:
        rows.append((f"migrations, {folders}-folder mailbox", f"{len(done)}/{count} finished, failed: {failed[:3]}"))
        return
    # The worker's time: start -> login form, then credentials -> done (polled every 20 ms).
    times = sorted((waiting[pk] - started[pk]) + (done[pk][0] - submitted[pk]) for pk in started)
    p50, p95 = times[len(times) // 2], times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    span = max(value[0] for value in done.values()) - min(started.values())
    rows.append((f"migration, {folders}-folder mailbox, {count} at once: p50 / p95",
                 f"{p50 * 1000:.0f} / {p95 * 1000:.0f} ms"))
    rows.append((f"migrations per minute, {folders}-folder, 2 worker processes", f"{count / span * 60:.0f}"))


# --- scheduler ------------------------------------------------------------------------------------

def _scheduler(dovecot, redis_server, rows, counts, interval: int, intervals: int) -> None:
    """Each count: that many V3 accounts, every one due once per `interval` seconds (the worker's adaptive
    interval pinned to it through the environment), the fan-out called every 0.5 s for `intervals` intervals:
    accounts synced in each interval and the longest broker queue (bounded by SYNC_FANOUT_MAX)."""
    import redis
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from sync import crypto
    from sync.models import MailAccount
    from sync.runs import accounts_to_sync

    address, password = dovecot.take_mailbox()  # every account reads this one mailbox: a server's view
    owner = get_user_model().objects.create_user(username="scheduler@bench.example", email="scheduler@bench.example")
    broker = redis.Redis.from_url(redis_server.url)
    accounts = MailAccount.objects.filter(owner=owner)
    for count in counts:
        accounts.delete()
        broker.delete("celery")
        MailAccount.objects.bulk_create(
            MailAccount(owner=owner, address=f"s{n}@firma.example", provider_kind="imap", engine="v3",
                        imap_host="127.0.0.1", imap_port=dovecot.tls_port, imap_security="ssl", username=address,
                        secret_encrypted=crypto.encrypt_json({"password": password})) for n in range(count))
        per_interval, longest = [], 0
        for _ in range(intervals):
            began, ends = timezone.now(), time.perf_counter() + interval
            while time.perf_counter() < ends:
                accounts_to_sync()
                longest = max(longest, broker.llen("celery"))
                time.sleep(0.5)
            per_interval.append(accounts.filter(last_sync_at__gte=began).count())
        rates = " / ".join(f"{synced / interval:.0f}" for synced in per_interval)
        rows.append((f"scheduler, {count} accounts due every {interval} s, {intervals} intervals",
                     f"{rates} syncs/s, queue <= {longest} (bound {settings.SYNC_FANOUT_MAX})"))
        # Let the queue drain before the next count: its runs would be counted there.
        drain = time.perf_counter() + 60
        while broker.llen("celery") and time.perf_counter() < drain:
            time.sleep(0.5)


if __name__ == "__main__":
    main()
