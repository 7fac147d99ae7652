"""The mail corpus (tests/corpus/mail, a copy of shared/corpus/mail plus our own kinds) on a real Dovecot:
through the V2 poll, the V2 import, V3 IMAP and a full migration with the handoff. Each test asserts the
exact rows a user would expect in the CRM."""

import email
import io
import json
from email import policy
from pathlib import Path

import pytest
from django.core.management import call_command

from sync.identity import FALLBACK_PREFIX
from sync.models import SyncedMessage
from sync.runs import sync_account
from tests.conftest import wait_for
from tests.test_sync_engines import _switch_to_v3

pytestmark = pytest.mark.django_db

CORPUS = Path(__file__).parent / "corpus" / "mail"
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "mail"

# What the CRM shows for the corpus: (subject, sender, "id" = keyed by its Message-ID / "fallback").
# The three no-message-id-date-* files are one message written three ways: one row.
EXPECTED = sorted([
    ("ohne ID (Import)", "kunde@example.org", "fallback"),
    ("Angebot", "chef@example.org", "id"),
    ("WG: Angebot (korrigiert)", "assistenz@example.org", "id"),  # reuses the Message-ID: its own row
    ("Message-ID empty_brackets", "kunde@example.org", "fallback"),
    ("Message-ID outlook_one_off", "kunde@example.org", "fallback"),
    ("Grüße aus Köln – Rechnung Nr. 5", "Jürgen Müller <juergen@example.org>", "id"),
    ("Привет из Москвы", "Иван <ivan@example.org>", "id"),
    ("Angebot für die Büroräume € und mehr (Fortsetzung)", "Jürgen Müller <juergen@example.org>", "id"),
    ("Köln=?utf-8?b?!!kaputt?=", "kunde@example.org", "id"),  # a broken encoded word stays as written
    ("ohne Datum und ohne ID", "kunde@example.org", "fallback"),
    ("Datum im Jahr 20250", "kunde@example.org", "id"),
    ("Message-ID mit Kommentar", "kunde@example.org", "id"),
    ("Kopfzeilen mit Müll", "kunde@example.org", "id"),
])


def corpus_files():
    return sorted(CORPUS.glob("*.eml"))


def raw_of(path: Path, address: str) -> bytes:
    return path.read_bytes().replace(b"<mailbox address>", f"<{address}>".encode())


def rows(account):
    return sorted(
        (m.subject, m.sender, "fallback" if m.dedup_key.startswith(FALLBACK_PREFIX) else "id")
        for m in SyncedMessage.objects.filter(account=account)
    )


def described(account) -> str:
    """Every stored row with what makes its identity: the assertion message when rows differ."""
    return "\n".join(f"{m.subject!r} {m.sender!r} {m.dedup_key[:50]} {m.fingerprint} {m.folder} {m.imported_by}"
                     for m in SyncedMessage.objects.filter(account=account).order_by("subject", "pk"))


def deliver_corpus(dovecot, address, folder="INBOX"):
    dovecot.deliver(address, *(raw_of(path, address) for path in corpus_files()), folder=folder)


def copy_folder(dovecot, address, source, target):
    """What a mail client does to put a message into a second folder: IMAP COPY (INTERNALDATE kept)."""
    client = dovecot.client(address)
    try:
        if not client.folder_exists(target):
            client.create_folder(target)
        client.select_folder(source)
        client.copy(client.search("ALL"), target)
    finally:
        client.logout()


def test_it_holds_every_file_of_the_shared_corpus():
    # New kinds in shared/corpus must reach this copy (and EXPECTED), or they are not tested.
    if not SHARED_CORPUS.is_dir():
        pytest.skip("shared/corpus is not beside this checkout")
    for shared in SHARED_CORPUS.glob("*.eml"):
        assert (CORPUS / shared.name).read_bytes() == shared.read_bytes(), shared.name


def test_it_imports_the_corpus_through_v2_then_v3_exactly_once(imap_account, dovecot, mailbox, mail_settings):
    deliver_corpus(dovecot, mailbox[0])
    assert sync_account(imap_account.pk) == len(EXPECTED)  # V2: one bad message never stops the poll
    assert rows(imap_account) == EXPECTED
    _switch_to_v3(imap_account, dovecot, mailbox)
    assert sync_account(imap_account.pk) == 0  # V3 reads the whole INBOX once: everything is known
    assert rows(imap_account) == EXPECTED
    imap_account.refresh_from_db()
    assert (imap_account.status, imap_account.last_sync_error) == ("active", "")
    assert set(SyncedMessage.objects.filter(account=imap_account).values_list("imported_by", flat=True)) == {"v2"}


def test_it_keeps_one_row_for_a_message_in_two_folders(imap_account, dovecot, mailbox, mail_settings):
    _switch_to_v3(imap_account, dovecot, mailbox)
    deliver_corpus(dovecot, mailbox[0])
    copy_folder(dovecot, mailbox[0], "INBOX", "Archiv")
    assert sync_account(imap_account.pk) == len(EXPECTED)
    assert sync_account(imap_account.pk) == 0
    assert rows(imap_account) == EXPECTED, described(imap_account)


def _import_entry(path: Path, address: str) -> dict:
    # What a V2 export holds: the headers as written (ASCII files of the shared corpus).
    message = email.message_from_bytes(raw_of(path, address), policy=policy.compat32)
    entry = {"folder": "INBOX", "subject": str(message["Subject"]), "from": str(message["From"]),
             "to": str(message["To"]), "date": str(message["Date"]), "received_at": "2025-11-10T08:00:00Z"}
    if message["Message-ID"] is not None:
        entry["message_id"] = str(message["Message-ID"])
    return entry


def test_it_recognises_v2_imported_mail_in_v3(imap_account, user, dovecot, mailbox, mail_settings, tmp_path):
    shared_kinds = [path for path in corpus_files() if (SHARED_CORPUS / path.name).exists() or
                    path.name.startswith(("no-message-id", "same-message-id", "message-id-empty",
                                          "message-id-bracketed"))]
    export = {"accounts": [{
        "owner": user.email, "address": imap_account.address, "provider_kind": "imap",
        "imap": {"host": "127.0.0.1", "port": dovecot.tls_port, "security": "ssl", "username": mailbox[0]},
        "password": mailbox[1], "folders": [{"name": "INBOX", "v2_high_water": "2025-11-10T08:00:00Z"}],
        "imported": [_import_entry(path, mailbox[0]) for path in shared_kinds],
    }]}
    (tmp_path / "v2.json").write_text(json.dumps(export))
    out = io.StringIO()
    call_command("import_v2_accounts", str(tmp_path / "v2.json"), stdout=out)
    assert "messages imported: 5" in out.getvalue()  # the three Date spellings are one message
    imported = rows(imap_account)
    dovecot.deliver(mailbox[0], *(raw_of(path, mailbox[0]) for path in shared_kinds))
    _switch_to_v3(imap_account, dovecot, mailbox)
    assert sync_account(imap_account.pk) == 0
    assert rows(imap_account) == imported == sorted(
        row for row in EXPECTED if row[0] in {
            "ohne ID (Import)", "Angebot", "WG: Angebot (korrigiert)", "Message-ID empty_brackets",
            "Message-ID outlook_one_off"})


@pytest.mark.django_db(transaction=True)
def test_it_migrates_the_corpus_end_to_end_with_the_worker(client, user, imap_account, dovecot, mailbox,
                                                           mail_settings, celery_worker_thread):
    from tests.test_migration_imap import _finished, _start, _submit

    address, password = mailbox
    files = corpus_files()
    early, late = files[::2], files[1::2]
    dovecot.deliver(address, *(raw_of(path, address) for path in early))
    sync_account(imap_account.pk)  # V2 imports the early half
    client.force_login(user)
    migration = _start(client, imap_account)
    # The late half arrives while the migration runs (after V2's last poll, before the handoff).
    dovecot.deliver(address, *(raw_of(path, address) for path in late))
    _submit(client, migration, password)
    assert _finished(migration).status == "done"
    # And the whole corpus once more in another folder after the switch: nothing new.
    copy_folder(dovecot, address, "INBOX", "Archiv")
    # The worker runs the first V3 sync after the handoff; a run of ours meanwhile finds it leased.
    wait_for(lambda: sync_account(imap_account.pk) >= 0 and rows(imap_account) == EXPECTED)
    assert sync_account(imap_account.pk) == 0
    assert rows(imap_account) == EXPECTED, described(imap_account)
