"""The data migration that gives stored messages the one identity (sync 0004) without duplicates."""

from datetime import datetime, timezone

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from sync.identity import legacy_key

BEFORE = [("sync", "0003_exchange_ews")]
AFTER = [("sync", "0004_message_identity")]
WHEN = datetime(2025, 7, 1, 7, 0, tzinfo=timezone.utc)


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def latest_schema_afterwards():
    """Every app back at its newest migration when the test ends: later tests need the columns added since."""
    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_it_rekeys_stored_messages_without_creating_duplicates(django_user_model, latest_schema_afterwards):
    old = _migrate(BEFORE)
    User, Account, Message = (old.get_model("auth", "User"), old.get_model("sync", "MailAccount"),
                              old.get_model("sync", "SyncedMessage"))
    owner = User.objects.create(username="anna@example.com", email="anna@example.com")
    account = Account.objects.create(owner=owner, address="anna@gmx.de", provider_kind="imap")

    def stored(key, **fields):
        fields.setdefault("subject", "ohne ID")
        fields.setdefault("sender", "kunde@example.org")
        fields.setdefault("received_at", WHEN)
        return Message.objects.create(account=account, dedup_key=key, folder="INBOX", imported_by="v2", **fields)

    # One message without a Message-ID, stored twice under the old per-engine keys (Date as written, Date re-rendered).
    first = stored("sha256:" + "a" * 64)
    stored("sha256:" + "b" * 64)
    # Another message with the same sender and subject, delivered a day later: not a copy.
    later = stored("sha256:" + "d" * 64, received_at=WHEN.replace(day=2))
    # Rows an old import stored without a delivery time: never taken for copies of each other.
    undelivered = [stored(f"sha256:{i}" + "e" * 63, subject="Ihre Rechnung", sender="billing@example.org",
                          received_at=None) for i in range(3)]
    # An id the old code keyed by its bracket content; an empty one.
    stored("[83c48ddd=@microsoft.com]", message_id="<[83c48ddd=@microsoft.com]>", subject="Outlook")
    stored("sha256:" + "c" * 64, message_id="<>", subject="leer")
    # Two different messages sharing an id (the old code had kept them apart only by luck of their keys).
    stored("dup-4711@example.org", message_id="<dup-4711@example.org>", subject="Angebot", sender="chef@example.org")
    stored("dup-4711@example.org-x", message_id="dup-4711@example.org", subject="WG: Angebot (korrigiert)",
           sender="assistenz@example.org")
    # A message the old code keyed correctly already.
    stored("4711@kunde.example", message_id="<4711@kunde.example>", subject="Eins")

    new = _migrate(AFTER)
    Message = new.get_model("sync", "SyncedMessage")
    assert Message.objects.filter(pk__in=[row.pk for row in undelivered]).count() == 3
    rows = {m.subject: m for m in Message.objects.filter(account_id=account.pk).exclude(pk=later.pk)
            .exclude(subject="Ihre Rechnung")}
    assert sorted(rows) == ["Angebot", "Eins", "Outlook", "WG: Angebot (korrigiert)", "leer", "ohne ID"]
    assert rows["ohne ID"].pk == first.pk  # the older of the two copies stays
    assert Message.objects.filter(account_id=account.pk).count() == len(rows) + 1 + 3  # the later one stays too
    # The engines will recognise it by sender, subject and delivery time (store_messages looks the key up).
    assert rows["ohne ID"].dedup_key == legacy_key(received_at=WHEN, sender="kunde@example.org", subject="ohne ID")
    assert Message.objects.get(pk=later.pk).dedup_key == legacy_key(
        received_at=WHEN.replace(day=2), sender="kunde@example.org", subject="ohne ID")
    assert rows["Outlook"].dedup_key.startswith("sha256:") and rows["leer"].dedup_key.startswith("sha256:")
    assert rows["Angebot"].dedup_key == "dup-4711@example.org"
    assert rows["WG: Angebot (korrigiert)"].dedup_key.startswith("dup-4711@example.org #")
    assert rows["Eins"].dedup_key == "4711@kunde.example"
    assert all(m.fingerprint for m in rows.values())
