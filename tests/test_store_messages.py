"""sync.services.store_messages: identity dedup, shared Message-IDs, honest counts, one bad row never costs a batch."""

from datetime import datetime, timedelta, timezone

import pytest

from sync.identity import FetchedMessage
from sync.models import SkippedMessage, SyncedMessage
from sync.services import store_messages

pytestmark = pytest.mark.django_db
WHEN = datetime(2025, 11, 3, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def account(make_account, user):
    return make_account(user, "anna@gmx.de")


def store(account, *messages, folder="INBOX", engine="v3"):
    return store_messages(account=account, folder=folder, messages=list(messages), engine=engine)


def test_it_keeps_two_messages_that_share_a_message_id_apart_in_one_batch_and_across_runs(account):
    original = FetchedMessage(message_id="<dup-4711@example.org>", subject="Angebot", sender="chef@example.org",
                              sent_at=WHEN)
    other = FetchedMessage(message_id="<dup-4711@example.org>", subject="WG: Angebot (korrigiert)",
                           sender="assistenz@example.org", sent_at=WHEN + timedelta(days=1))
    assert store(account, original, other) == 2
    # Seen again by another engine and in another folder: nothing new.
    assert store(account, other, original, folder="Archiv", engine="v2") == 0
    keys = sorted(SyncedMessage.objects.values_list("subject", "dedup_key"))
    assert keys[0] == ("Angebot", "dup-4711@example.org")
    assert keys[1][0] == "WG: Angebot (korrigiert)" and keys[1][1].startswith("dup-4711@example.org #")


def test_it_counts_only_rows_it_inserted(account):
    messages = [FetchedMessage(message_id=f"<{i}@example.org>", subject=str(i), sent_at=WHEN) for i in range(5)]
    assert store(account, *messages[:3]) == 3
    assert store(account, *messages) == 2
    assert store(account, *messages) == 0
    assert SyncedMessage.objects.count() == 5


def test_it_stores_text_that_providers_send_with_nul_and_lone_surrogates(account):
    assert store(account, FetchedMessage(message_id="<nul@example.org>", subject="a\x00b\ud800c",
                                         sender="x\x00@example.org", sent_at=WHEN)) == 1
    assert SyncedMessage.objects.get().subject == "ab?c"


def test_it_records_a_row_the_database_refuses_and_stores_the_rest(account):
    refused = FetchedMessage(message_id="<" + "x" * 1200 + "@example.org>", subject="zu lang", sent_at=WHEN,
                             provider_id="AAMk-lang")
    fine = [FetchedMessage(message_id=f"<ok{i}@example.org>", subject=f"ok {i}", sent_at=WHEN) for i in range(3)]
    assert store(account, fine[0], refused, *fine[1:]) == 3
    assert sorted(SyncedMessage.objects.values_list("subject", flat=True)) == ["ok 0", "ok 1", "ok 2"]
    skipped = SkippedMessage.objects.get()
    assert (skipped.folder, skipped.reference, skipped.reason, skipped.detail) == (
        "INBOX", "AAMk-lang", "store_failed", "DataError")


def test_it_keeps_recurring_messages_without_id_and_date_apart_by_delivery_time(account):
    # A scanner or web form sends the same subject again and again, with neither Message-ID nor Date.
    scans = [FetchedMessage(subject="Scan", sender="scanner@example.org", received_at=WHEN + timedelta(hours=h))
             for h in range(3)]
    assert store(account, *scans) == 3
    # The same three copied into another folder keep their delivery time (IMAP COPY, Exchange): nothing new.
    assert store(account, *scans, folder="Archiv") == 0
    dated = FetchedMessage(subject="Scan", sender="scanner@example.org", sent_at=WHEN + timedelta(days=1),
                           received_at=WHEN + timedelta(days=1))
    assert store(account, dated) == 1


def test_it_recognises_an_id_less_row_stored_before_dates_were_recorded(account):
    from sync.identity import legacy_key

    # What the re-key (sync 0004) made of a row V2 stored: sender, subject and delivery time.
    SyncedMessage.objects.create(account=account, folder="INBOX", imported_by="v2", subject="Ihre Rechnung",
                                 sender="billing@example.org", received_at=WHEN,
                                 dedup_key=legacy_key(received_at=WHEN, sender="billing@example.org",
                                                      subject="Ihre Rechnung"))
    same = FetchedMessage(subject="Ihre Rechnung", sender="Billing <billing@example.org>",
                          sent_at=WHEN - timedelta(seconds=7), received_at=WHEN)
    next_month = FetchedMessage(subject="Ihre Rechnung", sender="billing@example.org",
                                sent_at=WHEN + timedelta(days=30), received_at=WHEN + timedelta(days=30))
    assert store(account, same, next_month) == 1
    assert SyncedMessage.objects.filter(subject="Ihre Rechnung").count() == 2


def test_it_recognises_one_message_with_and_without_its_message_id(account):
    # A V2 export lacked the Message-ID; the mailbox has it (and the other way round).
    exported = FetchedMessage(subject="Angebot", sender="kunde@example.org", sent_at=WHEN, received_at=WHEN)
    in_mailbox = FetchedMessage(message_id="<angebot-1@example.org>", subject="Angebot",
                                sender="Kunde <kunde@example.org>", sent_at=WHEN, received_at=WHEN)
    assert store(account, exported, engine="v2") == 1
    assert store(account, in_mailbox) == 0
    other = FetchedMessage(message_id="<angebot-2@example.org>", subject="Angebot 2", sender="kunde@example.org",
                           sent_at=WHEN)
    assert store(account, other) == 1
    assert store(account, FetchedMessage(subject="Angebot 2", sender="kunde@example.org", sent_at=WHEN)) == 0
    assert SyncedMessage.objects.count() == 2


def test_it_keeps_one_row_when_one_engine_cannot_read_the_date_of_a_message_with_an_id(account):
    # IMAP could not read the Date (it counts as missing); Graph reports the sent time.
    imap = FetchedMessage(message_id="<odd-date@example.org>", subject="x", sender="a@b.example", received_at=WHEN)
    graph = FetchedMessage(message_id="<odd-date@example.org>", subject="x", sender="a@b.example",
                           sent_at=WHEN - timedelta(minutes=5), received_at=WHEN)
    assert store(account, imap) == 1
    assert store(account, graph) == 0


@pytest.mark.django_db(transaction=True)
def test_it_does_not_count_rows_an_overlapping_run_stored_first(account):
    # Two runs of one account store the same new messages (a lease lost to a frozen process):
    # the other run's INSERT is under way, not yet committed, when this one looks them up.
    import threading

    from django.db import connection, transaction

    messages = [FetchedMessage(message_id=f"<race{i}@example.org>", subject=str(i), sent_at=WHEN) for i in range(20)]
    inserted, release = threading.Event(), threading.Event()
    counts = {}

    def other_run():
        try:
            with transaction.atomic():
                counts["other"] = store(account, *messages)
                inserted.set()
                release.wait(30)
        finally:
            connection.close()

    def this_run():
        try:
            counts["this"] = store(account, *messages)
        finally:
            connection.close()

    other = threading.Thread(target=other_run)
    other.start()
    assert inserted.wait(30)
    this = threading.Thread(target=this_run)
    this.start()
    # This run's INSERT waits for the other's uncommitted rows (the unique key), then skips them.
    with connection.cursor() as cursor:
        for _ in range(600):
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            if cursor.fetchone()[0]:
                break
            threading.Event().wait(0.05)
        else:
            raise AssertionError("this run's INSERT never waited for the other's rows")
    release.set()
    other.join(30)
    this.join(30)
    assert counts == {"other": 20, "this": 0}
    assert SyncedMessage.objects.count() == 20
