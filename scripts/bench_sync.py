"""Benchmark: a V3 IMAP initial sync on a loopback Dovecot with PostgreSQL; prints the figures.

    .venv/bin/python scripts/bench_sync.py [--messages 5000] [--runs 3]

Starts a throw-away PostgreSQL and Dovecot on 127.0.0.1 (nothing else is
touched), APPENDs N messages of ~2 KB with mixed header kinds (with and
without Message-ID, encoded words, 8-bit subjects), then measures:
- a raw FETCH of the same header items (the ceiling: what the server and
  imapclient can deliver),
- the V3 engine's first run over the folder (LIST, STATUS, SEARCH, FETCH,
  parse, identity, store), on an empty store each run,
- an unchanged run (nothing new: one LIST and one STATUS per folder).
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
    args = parser.parse_args()

    from portal.devservers import Dovecot, Postgres

    postgres = Postgres().start()
    dovecot = Dovecot({}, pool_size=1).start()
    try:
        os.environ["PORTAL_DATA_DIR"] = str(postgres.base / "portal-data")  # never the user's own data
        os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:{postgres.port}/postgres"
        os.environ["EGRESS_ALLOW_NETWORKS"] = "127.0.0.1/32"
        os.environ["MAIL_TLS_CA_FILE"] = str(dovecot.cert_path)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        _run(dovecot, get_user_model(), args)
    finally:
        dovecot.stop()
        postgres.stop()


def _run(dovecot, User, args) -> None:
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

    raw_rates, sync_rates = [], []
    for _ in range(args.runs):
        client = imap.open_mailbox(settings, password)
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        started = time.perf_counter()
        for start in range(0, len(uids), imap.FETCH_BATCH):
            client.fetch(uids[start : start + imap.FETCH_BATCH], imap.FETCH_ITEMS)
        raw_rates.append(len(uids) / (time.perf_counter() - started))
        imap.close(client)

        SyncedMessage.objects.filter(account=account).delete()
        FolderState.objects.filter(account=account).delete()
        started = time.perf_counter()
        added = engine.sync(MailAccount.objects.get(pk=account.pk))
        elapsed = time.perf_counter() - started
        assert added == args.messages, (added, args.messages)
        sync_rates.append(added / elapsed)

    started = time.perf_counter()
    engine.sync(MailAccount.objects.get(pk=account.pk))
    unchanged_ms = (time.perf_counter() - started) * 1000

    best_raw, best_sync = max(raw_rates), max(sync_rates)
    print(f"raw FETCH of the header items:   {best_raw:8.0f} msg/s (best of {args.runs})")
    print(f"V3 IMAP initial sync (stored):   {best_sync:8.0f} msg/s (best of {args.runs}), "
          f"{best_sync / best_raw:.2f} x raw")
    print(f"V3 IMAP unchanged run:           {unchanged_ms:8.1f} ms")


if __name__ == "__main__":
    main()
