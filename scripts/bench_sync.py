"""Benchmark: sync figures on a loopback Dovecot with PostgreSQL; prints a table (./scripts/bench runs it).

    .venv/bin/python scripts/bench_sync.py [--messages 5000] [--runs 3] [--quick]

Starts a throw-away PostgreSQL and Dovecot on 127.0.0.1 (nothing else is
touched), APPENDs N messages of ~2 KB with mixed header kinds (with and
without Message-ID, encoded words, 8-bit subjects), then measures:
- a raw FETCH of the same header items (the ceiling: what the server and
  imapclient can deliver),
- the parser alone (sync/headers.py and the identity keys), CPU us per message,
- the V3 engine's first run over the folder (LIST, STATUS, SEARCH, FETCH,
  parse, identity, store), on an empty store each run,
- an unchanged account's run at 1, 10 and 50 folders, on loopback and through
  a proxy that adds 20 ms per round trip: wall and CPU ms, IMAP round trips,
  database queries,
- the fan-out at 1,000 and 5,000 accounts with no worker: accounts queued
  after each of 5 ticks (bounded by SYNC_FANOUT_MAX) and ms per tick.
Wall-clock figures belong here, never in the tests.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _messages(count: int) -> list[bytes]:
    from portal.devservers import make_message

    out = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            out.append(make_message(subject=f"Angebot {i}", body="x" * 1500))
        elif kind == 1:
            out.append(make_message(subject=f"ohne ID {i}", message_id=None, body="x" * 1500))
        elif kind == 2:
            out.append(make_message(subject=f"=?utf-8?q?Gr=C3=BC=C3=9Fe_{i}?=", body="x" * 1500))
        else:
            raw = make_message(subject=f"Rechnung {i}", body="x" * 1500)
            out.append(raw.replace(f"Rechnung {i}".encode(), f"Grüße {i}".encode("cp1252")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 messages, one run")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.runs = 1000, 1

    from portal.devservers import Dovecot, Postgres

    postgres = Postgres().start()
    dovecot = Dovecot({}, pool_size=4).start()
    try:
        os.environ["PORTAL_DATA_DIR"] = str(postgres.base / "portal-data")  # never the user's own data
        os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:{postgres.port}/postgres"
        os.environ["EGRESS_ALLOW_NETWORKS"] = "127.0.0.1/32"
        os.environ["MAIL_TLS_CA_FILE"] = str(dovecot.cert_path)
        os.environ["CELERY_BROKER_URL"] = "filesystem://"  # in PORTAL_DATA_DIR: the fan-out's queue
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        rows = []
        _run(dovecot, get_user_model(), args, rows)
        _unchanged(dovecot, get_user_model(), rows)
        _fan_out(get_user_model(), rows)
        print()
        print(f"| {'figure':<62} | {'value':>34} |")
        print(f"|{'-' * 64}|{'-' * 36}|")
        for name, value in rows:
            print(f"| {name:<62} | {value:>34} |")
    finally:
        dovecot.stop()
        postgres.stop()


def _run(dovecot, User, args, rows) -> None:
    from sync import crypto
    from sync.imap import client as imap
    from sync.imap import engine
    from sync.models import FolderState, MailAccount, SyncedMessage

    address, password = dovecot.take_mailbox()
    started = time.perf_counter()
    connection = dovecot.client(address)
    batch = _messages(args.messages)
    for start in range(0, len(batch), 500):
        connection.multiappend("INBOX", batch[start : start + 500])
    connection.logout()
    print(f"loaded {args.messages} messages in {time.perf_counter() - started:.1f} s")

    owner = User.objects.create_user(username="bench@example.org", email="bench@example.org")
    account = MailAccount.objects.create(
        owner=owner, address=address, provider_kind="imap", engine="v3", imap_host="127.0.0.1",
        imap_port=dovecot.tls_port, imap_security="ssl", username=address,
        secret_encrypted=crypto.encrypt_json({"password": password}),
    )
    settings = imap.ImapSettings("127.0.0.1", dovecot.tls_port, "ssl", address)

    raw_rates, sync_rates, parse_cpu = [], [], []
    for _ in range(args.runs):
        client = imap.open_mailbox(settings, password)
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        started = time.perf_counter()
        fetched = []
        for start in range(0, len(uids), imap.FETCH_BATCH):
            fetched.append(client.fetch(uids[start : start + imap.FETCH_BATCH], imap.FETCH_ITEMS))
        raw_rates.append(len(uids) / (time.perf_counter() - started))
        imap.close(client)
        # The parser alone (headers + identity keys), in CPU time: steadier than wall clock on a busy machine.
        started = time.process_time()
        for answer in fetched:
            for uid, data in answer.items():
                imap.parse_fetched(uid, data)
        parse_cpu.append((time.process_time() - started) / len(uids) * 1e6)

        SyncedMessage.objects.filter(account=account).delete()
        FolderState.objects.filter(account=account).delete()
        started = time.perf_counter()
        added = engine.sync(MailAccount.objects.get(pk=account.pk))
        elapsed = time.perf_counter() - started
        assert added == args.messages, (added, args.messages)
        sync_rates.append(added / elapsed)

    best_raw, best_sync = max(raw_rates), max(sync_rates)
    rows.append((f"raw FETCH of the header items, {args.messages} msgs", f"{best_raw:.0f} msg/s"))
    rows.append(("V3 IMAP initial sync (stored)", f"{best_sync:.0f} msg/s, {best_sync / best_raw:.2f} x raw"))
    rows.append(("header parsing + identity keys (CPU per message)", f"{min(parse_cpu):.0f} us"))


def _unchanged(dovecot, User, rows) -> None:
    """An unchanged account's run at 1, 10 and 50 folders, loopback and +20 ms per round trip."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sync import crypto
    from sync.models import MailAccount
    from sync.runs import sync_account
    from tests.fakes.imap_proxy import RewritingImapProxy

    owner = User.objects.create_user(username="unchanged@example.org", email="unchanged@example.org")
    for folders in (1, 10, 50):
        address, password = dovecot.take_mailbox()
        client = dovecot.client(address)
        for number in range(1, folders):
            client.create_folder(f"Ordner {number:02d}")
        client.logout()
        for delay in (0.0, 0.010):  # 10 ms each way: 20 ms per round trip
            proxy = RewritingImapProxy(dovecot, delay=delay)
            try:
                account = MailAccount.objects.create(
                    owner=owner, address=f"{delay}-{address}", provider_kind="imap", engine="v3",
                    imap_host="127.0.0.1", imap_port=proxy.port, imap_security="ssl", username=address,
                    secret_encrypted=crypto.encrypt_json({"password": password}))
                sync_account(account.pk)  # the first run reads the folders and records cursors
                walls, cpus = [], []
                for _ in range(5):
                    proxy.reset_counts()
                    with CaptureQueriesContext(connection) as queries:
                        wall, cpu = time.perf_counter(), time.process_time()
                        sync_account(account.pk)
                        walls.append(time.perf_counter() - wall)
                        cpus.append(time.process_time() - cpu)
                line = "+20 ms" if delay else "loopback"
                # process_time includes the proxy's threads (same process): an upper bound.
                rows.append((f"unchanged sync, {folders} folders, {line} (median of 5)",
                             f"{sorted(walls)[2] * 1000:.1f} ms, CPU<={sorted(cpus)[2] * 1000:.1f} ms, "
                             f"{proxy.round_trips} RT, {len(queries.captured_queries)} q"))
            finally:
                proxy.close()


def _fan_out(User, rows) -> None:
    """The fan-out with no worker: how many accounts are queued after each tick, and what a tick costs."""
    from django.conf import settings

    from sync.models import MailAccount
    from sync.runs import accounts_to_sync

    owner = User.objects.create_user(username="fanout@example.org", email="fanout@example.org")
    for count in (1000, 5000):
        MailAccount.objects.filter(owner=owner).delete()
        MailAccount.objects.bulk_create(
            MailAccount(owner=owner, address=f"k{n}@firma.example", provider_kind="imap", engine="v3",
                        imap_host=f"imap{n % 250}.firma.example", imap_port=993, imap_security="ssl")
            for n in range(count))  # 250 servers: SYNC_MAX_PER_DESTINATION (20 each) does not bind
        queued, ticks = 0, []
        for _ in range(5):
            started = time.perf_counter()
            queued += len(accounts_to_sync())
            ticks.append((time.perf_counter() - started) * 1000)
        rows.append((f"fan-out, {count} accounts, no worker: queued after 5 ticks",
                     f"{queued} (bound {settings.SYNC_FANOUT_MAX}), {sorted(ticks)[2]:.0f} ms/tick"))


if __name__ == "__main__":
    main()
