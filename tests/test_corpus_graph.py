"""The mail corpus (tests/corpus/mail) through Microsoft Graph: each file as the item Exchange shows for it.

Exchange parses a message once and Graph serves fields, not headers:
internetMessageId as the header has it (or none), sentDateTime the Date
header in UTC, from/toRecipients as address objects, the subject decoded.
Each test asserts the exact rows a user would expect in the CRM, the same
rows the IMAP engines store for these files (tests/test_corpus_imap.py).
"""

import io
import json
from datetime import datetime, timezone
from email.utils import getaddresses, parseaddr
from pathlib import Path

import pytest
from django.core.management import call_command

from sync import headers
from sync.identity import FALLBACK_PREFIX
from sync.models import SyncedMessage
from sync.runs import sync_account
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    browser_get, fake_microsoft_server, local, microsoft, ms_account, sign_in,
)
from tests.test_corpus_imap import EXPECTED, corpus_files, described, raw_of, rows
from tests.test_graph_folders import migrate
from tests.test_microsoft_sync import migrated  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db

# When Exchange received the corpus (a copy into another folder keeps it).
RECEIVED = datetime(2025, 11, 10, 8, 0, tzinfo=timezone.utc)
# The kinds the shared corpus names: V2 imported them, then V3 sees them through Graph.
IMPORTED_KINDS = ("no-message-id", "same-message-id", "message-id-empty", "message-id-bracketed")


def graph_item(path: Path, address: str) -> dict:
    """The Graph item Exchange would show for a corpus file, as keyword arguments of FakeMicrosoft.deliver."""
    fields = headers.split_fields(raw_of(path, address))
    hint = headers.charset_hint(fields)

    def first(name: str) -> str:
        values = fields.get(name) or []
        return headers.decode_value(values[0], hint) if values else ""

    name, sender = parseaddr(first("from"))
    message_ids = fields.get("message-id")
    return {
        "subject": first("subject"), "sender": sender, "sender_name": name,
        "internet_message_id": message_ids[0].decode("ascii", "replace").strip() if message_ids else None,
        "sent": headers.parse_date(first("date")), "received": RECEIVED,
        "to": [a for _, a in getaddresses([first("to")]) if a], "cc": [a for _, a in getaddresses([first("cc")]) if a],
    }


def deliver_corpus(fake, address: str, folder="inbox", files=None) -> None:
    for path in files or corpus_files():
        fake.deliver(address, folder=folder, **graph_item(path, address))


def test_it_stores_the_corpus_from_graph_with_the_rows_a_user_expects(migrated, microsoft):
    deliver_corpus(microsoft, migrated.address)
    assert sync_account(migrated.pk) == len(EXPECTED), described(migrated)
    assert rows(migrated) == EXPECTED, described(migrated)
    assert sync_account(migrated.pk) == 0
    # The three Date spellings of one message are one row, dated as every engine reads the header.
    once = SyncedMessage.objects.get(account=migrated, subject="ohne ID (Import)")
    assert once.sent_at == datetime(2025, 7, 1, 7, 0, tzinfo=timezone.utc) and once.recipients == migrated.address
    # Unusable Message-IDs: stored as Graph gave them, keyed by the fallback identity.
    for subject, raw in (("Message-ID empty_brackets", "<>"),
                         ("Message-ID outlook_one_off", "<[83c48dddbea7492e873224a5ae1c04be-JFBVALKQOJXWILKNK4YVA7"
                                                        "CBPJ2XEZKEMV3E64DTPRCW2YLJNR6EK6DPKNWXI4A=@microsoft.com]>")):
        row = SyncedMessage.objects.get(account=migrated, subject=subject)
        assert row.message_id == raw and row.dedup_key.startswith(FALLBACK_PREFIX)
    # Two different messages sharing <dup-4711@example.org>: two rows.
    shared = SyncedMessage.objects.filter(account=migrated, message_id="<dup-4711@example.org>")
    assert sorted(shared.values_list("subject", flat=True)) == ["Angebot", "WG: Angebot (korrigiert)"]
    account = type(migrated).objects.get(pk=migrated.pk)
    assert (account.status, account.last_sync_error) == ("active", "")


def test_it_keeps_one_row_for_the_corpus_in_two_folders(migrated, microsoft):
    projekte = microsoft.add_folder(migrated.address, "Projekte", parent="inbox")
    deliver_corpus(microsoft, migrated.address)
    deliver_corpus(microsoft, migrated.address, folder=projekte)
    assert sync_account(migrated.pk) == len(EXPECTED)
    assert sync_account(migrated.pk) == 0
    assert rows(migrated) == EXPECTED, described(migrated)


def _import_entry(path: Path, address: str) -> dict:
    """What a V2 export holds for a file: the headers as written (the Date too), the delivery time."""
    fields = headers.split_fields(raw_of(path, address))
    entry = {"folder": "INBOX", "received_at": "2025-11-10T08:00:00Z"}
    for key, name in (("subject", "subject"), ("from", "from"), ("to", "to"), ("date", "date"),
                      ("message_id", "message-id")):
        if fields.get(name):
            entry[key] = fields[name][0].decode("utf-8")
    return entry


def test_it_recognises_v2_imported_mail_after_a_migration_to_graph(client, user, ms_account, microsoft, tmp_path):
    kinds = [path for path in corpus_files() if path.name.startswith(IMPORTED_KINDS)]
    export = {"accounts": [{
        "owner": user.email, "address": ms_account.address, "provider_kind": "microsoft",
        "folders": [{"name": "INBOX", "v2_high_water": "2025-11-10T08:00:00Z"}],
        "imported": [_import_entry(path, ms_account.address) for path in kinds],
    }]}
    (tmp_path / "v2.json").write_text(json.dumps(export))
    out = io.StringIO()
    call_command("import_v2_accounts", str(tmp_path / "v2.json"), stdout=out)
    assert "messages imported: 5" in out.getvalue()  # the three Date spellings are one message
    imported = rows(ms_account)
    assert imported == sorted(row for row in EXPECTED if row[0] in {
        "ohne ID (Import)", "Angebot", "WG: Angebot (korrigiert)", "Message-ID empty_brackets",
        "Message-ID outlook_one_off"})

    deliver_corpus(microsoft, ms_account.address, files=kinds)  # the same mail, in Exchange
    migrate(client, user, ms_account, microsoft)
    assert sync_account(ms_account.pk) == 0, described(ms_account)
    assert rows(ms_account) == imported, described(ms_account)
    assert set(SyncedMessage.objects.filter(account=ms_account).values_list("imported_by", flat=True)) == {"v2"}
