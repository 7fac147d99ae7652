"""Benchmark: IMAP push (the IDLE listener) against polling; prints a table (./scripts/bench runs it).

    .venv/bin/python scripts/bench_push.py [--quick] [--connections N]

Starts its own PostgreSQL, Redis and Dovecot (process and client limits raised
for many connections) on 127.0.0.1, then:
- push against polling, in one window: K accounts pushed (manage.py imap_idle
  --shard 0/2 takes the even account ids) and K polled (the odd ids), with a
  real celery beat at a fixed 30-second interval (SYNC_INTERVAL_SECONDS and its
  adaptive _MIN_ and _MAX_ all 30: a measured poll latency fits in one minute;
  the default adaptive interval's figures are computed from it) and a prefork
  worker of 2 processes. Mail is
  delivered one message at a time with `doveadm save` (Dovecot's own delivery,
  no IMAP login of its own): to the pushed accounts every PUSH_GAP seconds, to
  each polled account once at a random moment of its own slice of one interval. Latency:
  the save's return to the SyncedMessage row being there (the database is read
  every 50 ms), p50/p95 per group;
- logins per account per hour: Dovecot's "Login:" lines per user in an exact
  60-second part of that window (two poll intervals), scaled to an hour; a
  session longer than SHORT_SESSION (or still open) is an IDLE connection's, a
  shorter one a sync run's. The pushed accounts' safety-net poll
  (SYNC_PUSH_POLL_SECONDS, 1,800 s) is longer than any window here, so its
  share is computed (3,600 / 1,800), and said so. A listener that exits is
  started again at once (as docker-compose's restart policy would) and counted;
- capacity: one listener process (--shard 0/1) for N accounts, each its own
  mailbox on the local Dovecot: time from the process start until Dovecot logged
  N logins and the heartbeat counted N connections, then its RSS, threads, and
  CPU while it holds them for a few seconds.
Wall-clock figures belong here, never in the tests; on a shared machine they
are noisy.
"""

import argparse
import logging
import os
import random
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from bench_work import _rss, _stop, bench_environment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POLL_INTERVAL = 30  # the polled group's fixed interval here (SYNC_INTERVAL_SECONDS = _MIN_ = _MAX_)
# portal/settings.py's defaults of the adaptive interval (sync.schedule): the base, after new mail, the longest.
DEFAULT_INTERVAL, DEFAULT_MIN, DEFAULT_MAX = 120, 60, 900
PUSH_GAP = 2.0  # seconds between two deliveries to the pushed group
# Dovecot's log: a login (user, session) and the end of a session, each with its time (whole seconds).
LOGIN = re.compile(rb"^(\w+ +\d+ [\d:]+) imap-login: Info: Login: user=<([^>]+)>.*session=<([^>]+)>", re.M)
ENDED = re.compile(rb"^(\w+ +\d+ [\d:]+) imap\([^)]*\)<\d+><([^>]+)>: Info: Disconnected", re.M)
SHORT_SESSION = 5  # seconds: a sync run's session is shorter, an IDLE connection's longer (or still open)
# One imap process per connection as usual, a few login processes each holding many TLS
# connections (service_count = 0, Dovecot's "high-performance" login mode); {n}: connections + room.
MANY_CONNECTIONS = """
default_process_limit = {n}
default_client_limit = {twice}
service imap-login {{
  service_count = 0
  process_min_avail = 2
  process_limit = 8
  client_limit = {n}
}}
service imap {{
  process_limit = {n}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 + 10 accounts, 300 IDLE connections")
    parser.add_argument("--connections", type=int, help="IDLE connections of the capacity run (default 1,000; "
                        "beyond IMAP_IDLE_MAX_PER_DESTINATION, 2,000, raise that too)")
    args = parser.parse_args()
    per_group, capacity = (10, 300) if args.quick else (20, 1000)
    capacity = args.connections or capacity

    from portal.devservers import Dovecot, Postgres, Redis

    postgres, redis_server = Postgres().start(), Redis().start()
    room = 2 * per_group + capacity + 200
    dovecot = Dovecot({}, pool_size=2 * per_group + capacity,
                      extra_config=MANY_CONNECTIONS.format(n=room, twice=2 * room)).start()
    processes = []
    try:
        bench_environment(
            postgres, redis_server, dovecot,
            # A fixed interval for the measured polls (the adaptive one would stretch it within the
            # window); every bench account is on the one Dovecot, so the per-destination cap is lifted
            # lest it shift the polls of the 2 x K accounts by a tick.
            SYNC_INTERVAL_SECONDS=str(POLL_INTERVAL), SYNC_INTERVAL_MIN_SECONDS=str(POLL_INTERVAL),
            SYNC_INTERVAL_MAX_SECONDS=str(POLL_INTERVAL), SYNC_MAX_PER_DESTINATION="1000",
        )
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        logging.disable(logging.INFO)
        rows = []
        log = open(postgres.base / "processes.log", "w")  # worker, beat and listener logs stay out of the table
        small = _push_against_poll(dovecot, rows, per_group, log, processes, postgres.base)
        _capacity(dovecot, rows, capacity, log, processes, small)
        print()
        print(f"| {'figure':<74} | {'value':>50} |")
        print(f"|{'-' * 76}|{'-' * 52}|")
        for name, value in rows:
            print(f"| {name:<74} | {value:>50} |")
    finally:
        for process in processes:
            if process.poll() is None:
                _stop(process)
        dovecot.stop()
        redis_server.stop()
        postgres.stop()


def _start(log, *command, **env):
    return subprocess.Popen([sys.executable, *command], cwd=ROOT, env=dict(os.environ, **env),
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def _logins(dovecot) -> list[bytes]:
    """The users of Dovecot's "Login:" lines so far, in order."""
    return [user for _, user, _ in LOGIN.findall(_dovecot_log(dovecot))]


def _dovecot_log(dovecot) -> bytes:
    return (dovecot.base / "dovecot.log").read_bytes()


def _sessions(log: bytes, start: int, end: int) -> list[tuple[bytes, bool]]:
    """(user, long) per login logged between the byte offsets start and end; long: the session lasted
    more than SHORT_SESSION seconds or is still open (an IDLE connection, not a sync run)."""
    def seconds(stamp: bytes) -> float:
        # No year in Dovecot's stamp: seconds since 1 Jan 1900 (a window over New Year is off by a year).
        return (datetime.strptime(stamp.decode(), "%b %d %H:%M:%S") - datetime(1900, 1, 1)).total_seconds()

    ended = {session: seconds(stamp) for stamp, session in ENDED.findall(log)}
    out = []
    for stamp, user, session in LOGIN.findall(log[start:end]):
        out.append((user, ended.get(session, float("inf")) - seconds(stamp) > SHORT_SESSION))
    return out


def _listener(log, shard: str, refresh: int, processes: list):
    """manage.py imap_idle; its refresh (and heartbeat) every `refresh` s instead of 30, so that its
    connection count is seen soon; nothing else of the listener is changed."""
    process = _start(log, "manage.py", "imap_idle", "--shard", shard, IMAP_IDLE_REFRESH_SECONDS=str(refresh))
    processes.append(process)
    return process


class Supervised:
    """A listener process restarted at once when it exits, as docker-compose's `restart: unless-stopped`
    and scripts/run's supervisor do; counts the restarts."""

    def __init__(self, log, shard: str, refresh: int, processes: list):
        self.log, self.shard, self.refresh, self.processes = log, shard, refresh, processes
        self.restarts = 0
        self.process = self._start()

    def _start(self):
        return _listener(self.log, self.shard, self.refresh, self.processes)

    def check(self) -> None:
        if self.process.poll() is not None:
            self.restarts += 1
            self.process = self._start()

    def stop(self) -> None:
        _stop(self.process)


def _accounts(dovecot, owner, count: int) -> list:
    from sync import crypto
    from sync.models import MailAccount

    accounts = []
    for _ in range(count):
        address, password = dovecot.take_mailbox()
        accounts.append(MailAccount(
            owner=owner, address=address, provider_kind="imap", engine="v3", imap_host="127.0.0.1",
            imap_port=dovecot.tls_port, imap_security="ssl", username=address,
            secret_encrypted=crypto.encrypt_json({"password": password})))
    return MailAccount.objects.bulk_create(accounts)


def _wait(predicate, timeout: float, what: str) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"bench_push: {what} not within {timeout:.0f} s (see the processes' log)")
        time.sleep(0.1)
    return time.perf_counter() - started


def _heartbeat(shard: str):
    from portal.models import Heartbeat
    from sync.imap import idle

    shard, shards = (int(part) for part in shard.split("/"))
    return Heartbeat.objects.filter(name=idle.heartbeat_name(shard, shards)).values_list("count", flat=True).first()


def _save(dovecot, address: str, subject: str) -> float:
    """Deliver one message with `doveadm save` (as Dovecot's LDA would, no IMAP login); return when it is stored."""
    from portal.devservers import make_message

    subprocess.run(["doveadm", "-c", str(dovecot.base / "dovecot.conf"), "save", "-u", address, "-m", "INBOX"],
                   input=make_message(subject=subject, body="neu"), check=True, capture_output=True)
    return time.perf_counter()


def _percentiles(values: list[float]) -> str:
    values = sorted(values)
    p50, p95 = values[len(values) // 2], values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return f"{p50:.2f} / {p95:.2f} s"


# --- push against polling -------------------------------------------------------------------------

def _push_against_poll(dovecot, rows, per_group: int, log, processes, base) -> tuple[int, float]:
    """Rows (a) and (b); returns the listener's connections and RSS in MB at the end. Stops the
    worker and beat it started."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from sync.models import AccountStatus, MailAccount, SyncedMessage

    owner = get_user_model().objects.create_user(username="push@bench.example", email="push@bench.example")
    made = _accounts(dovecot, owner, 2 * per_group)
    pushed = [one for one in made if one.pk % 2 == 0]  # the listener's shard 0/2
    polled = [one for one in made if one.pk % 2 == 1]
    # The listener first: its heartbeat must be live when beat's first fan-out runs, or the pushed
    # accounts would be polled at the 30 s interval once before the fan-out sees the listener.
    listener = Supervised(log, "0/2", 5, processes)
    _wait(lambda: _heartbeat("0/2") == len(pushed), 60, "the listener's connections")
    helpers = [
        _start(log, "-m", "celery", "-A", "portal", "worker", "--pool=prefork", "--concurrency=2",
               "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING"),
        _start(log, "-m", "celery", "-A", "portal", "beat", "--loglevel=WARNING",
               "-s", str(base / "celerybeat-schedule")),
    ]
    processes.extend(helpers)
    everyone = MailAccount.objects.filter(owner=owner)
    # Settled: every account synced once. The pushed ones then start at their longest interval
    # (SYNC_PUSH_POLL_SECONDS), where the adaptive interval has them after their first hour of
    # quiet runs: the window measures the steady state, not the ramp from the base interval.
    _wait(lambda: listener.check() or not everyone.filter(last_sync_at__isnull=True).exists(),
          90, "the first sync of every account")
    time.sleep(3)  # past the runs still queued by the first fan-out and the listener's catch-up
    MailAccount.objects.filter(pk__in=[one.pk for one in pushed]).update(
        sync_interval_seconds=settings.SYNC_PUSH_POLL_SECONDS,
        sync_due_at=timezone.now() + timedelta(seconds=settings.SYNC_PUSH_POLL_SECONDS * 0.9))

    # One timeline: the pushed accounts in turn every PUSH_GAP s through the window (each account's
    # gap is longer than IMAP_IDLE_DEBOUNCE_SECONDS), each polled account once in the first interval.
    assert len(pushed) * PUSH_GAP > settings.IMAP_IDLE_DEBOUNCE_SECONDS
    rng = random.Random(15)
    window = 2 * POLL_INTERVAL  # the logins are counted in exactly two poll intervals
    events = [(n * PUSH_GAP, pushed[n % len(pushed)], "push") for n in range(int(window / PUSH_GAP))]
    # Stratified over the interval (one random moment in each of K equal slices), so that the few
    # polled deliveries cover every phase of the poll: the latency sample is not bunched.
    events += [((n + rng.random()) * POLL_INTERVAL / len(polled), one, "poll") for n, one in enumerate(polled)]
    events.sort(key=lambda event: event[0])
    window_start, log_start, log_end = time.perf_counter(), len(_dovecot_log(dovecot)), None
    listener.restarts, restarts = 0, None
    pending, latency = {}, {"push": [], "poll": []}
    while (events or pending or log_end is None) and time.perf_counter() < window_start + window + 30:
        listener.check()
        now = time.perf_counter()
        if events and now - window_start >= events[0][0]:
            _, account, group = events.pop(0)
            subject = f"{group} {len(latency['push']) + len(latency['poll']) + len(pending)}"
            pending[subject] = (group, _save(dovecot, account.address, subject))
            continue
        if log_end is None and now - window_start >= window:
            log_end, restarts = len(_dovecot_log(dovecot)), listener.restarts
        for subject in SyncedMessage.objects.filter(subject__in=list(pending)).values_list("subject", flat=True):
            group, saved = pending.pop(subject)
            latency[group].append(time.perf_counter() - saved)
        time.sleep(0.05)
    if pending or log_end is None:
        raise SystemExit(f"bench_push: {len(pending)} messages never reached the CRM: {sorted(pending)[:5]}")
    time.sleep(SHORT_SESSION + 1)  # the sessions begun just before the end have ended (or are long)
    sessions = _sessions(_dovecot_log(dovecot), log_start, log_end)
    small = (len(pushed), float(_rss(listener.process.pid).split()[0]))
    listener.stop()
    for process in helpers:
        _stop(process)
    everyone.update(status=AccountStatus.STOPPED)  # out of the capacity run's shard

    rows.append((f"delivery -> CRM, push (IDLE + worker), {len(latency['push'])} msgs: p50 / p95",
                 _percentiles(latency["push"])))
    rows.append((f"delivery -> CRM, polling every {POLL_INTERVAL} s, fixed, {len(latency['poll'])} msgs: p50 / p95",
                 _percentiles(latency["poll"])))
    quiet = DEFAULT_MAX
    rows.append((f"  polling, default adaptive interval, quiet account (computed: {quiet} s)",
                 f"p50 ~{quiet / 2:.0f} s, p95 ~{quiet * 0.95:.0f} s, plus the run"))
    rows.append((f"  polling, default adaptive interval, mail in the last run ({DEFAULT_MIN} s)",
                 f"p50 ~{DEFAULT_MIN / 2:.0f} s, p95 ~{DEFAULT_MIN * 0.95:.0f} s, plus the run"))
    hour = 3600 / window
    users = {"push": {one.address.encode() for one in pushed}, "poll": {one.address.encode() for one in polled}}

    def per_account(group: str, long: bool | None = None) -> float:
        return sum(1 for user, kind in sessions if user in users[group] and long in (None, kind)) / per_group

    messages = len(latency["push"]) / per_group
    rows.append((f"logins/account in {window} s, polling every {POLL_INTERVAL} s, fixed (measured)",
                 f"{per_account('poll'):.2f} -> {per_account('poll') * hour:.0f}/h"))
    rows.append((f"  polling, default adaptive interval: quiet ({DEFAULT_MAX} s) / busy ({DEFAULT_MIN} s), scaled",
                 f"{per_account('poll') * hour * POLL_INTERVAL / DEFAULT_MAX:.0f}/h / "
                 f"{per_account('poll') * hour * POLL_INTERVAL / DEFAULT_MIN:.0f}/h"))
    rows.append((f"logins/account in {window} s, push, {messages:.1f} new msgs each (measured)",
                 f"{per_account('push'):.2f}: sync runs {per_account('push', False):.2f}, "
                 f"IDLE {per_account('push', True):.2f}"))
    idle_hour = per_account("push", True) * hour
    safety = 3600 / settings.SYNC_PUSH_POLL_SECONDS
    rows.append((f"  listener restarts in those {window} s (it exited, restarted at once)", f"{restarts}"))
    rows.append(("  push, no new mail: IDLE logins (measured) + safety-net polls (computed)",
                 f"{idle_hour + safety:.0f}/h = {idle_hour:.0f} + {safety:.0f} (3600 / SYNC_PUSH_POLL_SECONDS)"))
    return small


# --- capacity -------------------------------------------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _capacity(dovecot, rows, count: int, log, processes, small: tuple[int, float]) -> None:
    """Rows (c); small: (connections, RSS in MB) of the push run's listener, for the cost per connection."""
    from django.contrib.auth import get_user_model

    owner = get_user_model().objects.create_user(username="idle@bench.example", email="idle@bench.example")
    users = {one.address.encode() for one in _accounts(dovecot, owner, count)}
    before = len(_logins(dovecot))
    listener = _listener(log, "0/1", 2, processes)
    logged_in = _wait(lambda: sum(1 for user in _logins(dovecot)[before:] if user in users) >= count, 300,
                      f"{count} IDLE logins")
    counted = _wait(lambda: _heartbeat("0/1") == count, 120, f"a heartbeat of {count} connections") + logged_in
    time.sleep(2)
    if listener.poll() is not None:
        raise SystemExit("bench_push: the capacity run's listener exited (see the processes' log)")
    cpu, wall = _cpu_seconds(listener.pid), time.perf_counter()
    time.sleep(10)
    idle_cpu = (_cpu_seconds(listener.pid) - cpu) / (time.perf_counter() - wall)
    rss = float(_rss(listener.pid).split()[0])
    threads = _threads(listener.pid)
    relogins = sum(1 for user in _logins(dovecot)[before:] if user in users) - count
    stopping = time.perf_counter()
    if listener.poll() is not None:
        rows.append(("  the listener exited while it was measured", f"exit status {listener.returncode}"))
    _stop(listener)
    rows.append((f"one listener, {count} accounts: all logged in / heartbeat counts all",
                 f"{logged_in:.1f} / {counted:.1f} s after the process start"))
    each = (rss - small[1]) / (count - small[0]) * 1024
    rows.append((f"  its RSS and threads holding {count} IDLE connections",
                 f"{rss:.0f} MB, {threads} threads, ~{each:.0f} KB per connection"))
    rows.append(("  its CPU while they wait (10 s); logins beyond one per account (retries)",
                 f"{idle_cpu * 100:.1f} % of a core, {relogins}"))
    rows.append(("  SIGTERM to exit (every connection logs out)", f"{time.perf_counter() - stopping:.1f} s"))


if __name__ == "__main__":
    main()
