"""The mail corpus (tests/corpus/mail) through the V3 EWS engine and the fake Exchange.

Each file becomes the item Exchange would show for it: InternetMessageId as the header has it (none
without the header), DateTimeSent the Date header (the delivery time when it has none or an absurd
one), From and To/Cc as mailboxes (Name = the address when the header has no display name), the
subject decoded. The rows a user sees are the ones the IMAP corpus test expects: one identity,
whichever engine read the message.
"""

import io
import json
from datetime import datetime, timezone
from email.utils import getaddresses, parseaddr

import pytest
from django.core.management import call_command

from migration import services, steps
from migration.models import Migration
from sync import headers
from sync.identity import FALLBACK_PREFIX
from sync.models import MailAccount, SkippedMessage, SyncedMessage
from sync.runs import sync_account
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews  # noqa: F401
from tests.test_corpus_imap import EXPECTED, _import_entry, corpus_files, raw_of, rows
from tests.test_ews_folders import account, migrate  # noqa: F401 - the V2 Exchange account fixture

pytestmark = pytest.mark.django_db
ADDRESS = "anna@firma.test"
DELIVERED = datetime(2025, 11, 10, 8, 0, tzinfo=timezone.utc)
# The kinds V2 met in the wild: imported by V2, then seen again by V3 after the migration.
V2_KINDS = ("no-message-id-date-", "same-message-id-", "message-id-empty-brackets", "message-id-bracketed-outlook")


def exchange_item(raw: bytes) -> dict:
    """FakeEWS.deliver() arguments for one message file, read the way Exchange shows it."""
    fields = headers.split_fields(raw)
    hint = headers.charset_hint(fields)

    def value(name: str) -> str:
        return headers.decode_value(fields[name][0], hint) if fields.get(name) else ""

    name, sender = parseaddr(value("from"))
    return {
        "subject": value("subject"), "message_id": value("message-id"), "sender": sender,
        "sender_name": name or None, "received": DELIVERED, "sent": headers.parse_date(value("date")),
        "to": [pair for pair in getaddresses([value("to")]) if pair[1]],
        "cc": [pair for pair in getaddresses([value("cc")]) if pair[1]],
    }


def deliver_corpus(fake, folder="inbox", files=None):
    for path in files or corpus_files():
        fake.deliver(folder, **exchange_item(raw_of(path, ADDRESS)))


def test_it_reads_each_corpus_file_as_exchange_shows_it():
    items = {path.name: exchange_item(raw_of(path, ADDRESS)) for path in corpus_files()}
    assert items["message-id-empty-brackets.eml"]["message_id"] == "<>"
    assert items["date-missing-no-message-id.eml"]["message_id"] == ""
    assert items["no-message-id-date-single-digit-day.eml"]["sent"] == datetime(2025, 7, 1, 7, 0, tzinfo=timezone.utc)
    assert items["8bit-windows-1252-headers.eml"]["sender_name"] == "Jürgen Müller"
    assert items["same-message-id-original.eml"]["to"] == [("", "postfach@example.org")]


def test_it_imports_the_corpus_through_ews_exactly_once(account, fake_ews):  # noqa: F811
    migrate(account, fake_ews)
    deliver_corpus(fake_ews)
    assert sync_account(account.pk) == len(EXPECTED)  # one bad item never stops the run
    assert rows(account) == EXPECTED
    assert sync_account(account.pk) == 0
    assert rows(account) == EXPECTED
    account.refresh_from_db()
    assert (account.status, account.last_sync_error) == ("active", "")
    assert not SkippedMessage.objects.filter(account=account).exists()


def test_it_keeps_one_row_for_a_message_in_two_folders(account, fake_ews):  # noqa: F811
    fake_ews.add_folder("archiv", "Archiv", parent="inbox")
    deliver_corpus(fake_ews)
    deliver_corpus(fake_ews, folder="archiv")
    migrate(account, fake_ews)
    assert sync_account(account.pk) == len(EXPECTED)
    assert sync_account(account.pk) == 0
    assert rows(account) == EXPECTED


def test_mail_v2_imported_is_recognised_after_a_migration_to_exchange(user, fake_ews, tmp_path):
    v2_files = [path for path in corpus_files() if path.name.startswith(V2_KINDS)]
    assert len(v2_files) == 7
    export = {"accounts": [{
        "owner": user.email, "address": ADDRESS, "provider_kind": "exchange",
        "folders": [{"name": "INBOX", "v2_high_water": "2025-11-10T08:00:00Z"}],
        # The Date as written in each file ("1 Jul", "Tue, 01 Jul ... (CEST)", ...).
        "imported": [_import_entry(path, ADDRESS) for path in v2_files],
    }]}
    (tmp_path / "v2.json").write_text(json.dumps(export))
    out = io.StringIO()
    call_command("import_v2_accounts", str(tmp_path / "v2.json"), stdout=out)
    assert "messages imported: 5" in out.getvalue()  # the three Date spellings are one message
    account = MailAccount.objects.get(owner=user, address=ADDRESS)
    imported = rows(account)
    assert imported == sorted(row for row in EXPECTED if row[0] in {
        "ohne ID (Import)", "Angebot", "WG: Angebot (korrigiert)", "Message-ID empty_brackets",
        "Message-ID outlook_one_off"})

    # The same mail in the Exchange inbox; the user migrates (the worker's steps, run here in order).
    deliver_corpus(fake_ews, files=v2_files)
    migration = services.start_migration(user=user, account=account)
    assert steps.run_migration(migration.pk) == "awaiting_user"
    connection = {"ews_url": fake_ews.url, "username": EWS_USER, "auth_type": "auto", "ca_pem": fake_ews.cert_pem}
    services.submit_credentials(migration=Migration.objects.get(pk=migration.pk), connection=connection,
                                password=EWS_PASSWORD, actor="test")
    assert steps.run_migration(migration.pk) == "done"

    assert sync_account(account.pk) == 0  # EWS reads the whole inbox: every message is known
    assert rows(account) == imported
    assert SyncedMessage.objects.filter(account=account, subject="ohne ID (Import)").count() == 1
    assert set(SyncedMessage.objects.filter(account=account).values_list("imported_by", flat=True)) == {"v2"}
    fallback = SyncedMessage.objects.filter(account=account, dedup_key__startswith=FALLBACK_PREFIX)
    assert sorted(fallback.values_list("subject", flat=True)) == [
        "Message-ID empty_brackets", "Message-ID outlook_one_off", "ohne ID (Import)"]
    account.refresh_from_db()
    assert (account.engine, account.status, account.last_sync_error) == ("v3", "active", "")
