"""The V3 EWS engine over every mail folder, against the fake Exchange (exchangelib over HTTPS on 127.0.0.1):
folder discovery, new/renamed/deleted folders, the whole-folder first run after the handoff, items without
InternetMessageId and items Exchange cannot read. Each test asserts the rows a user would see in the CRM."""

from datetime import datetime, timedelta, timezone

import pytest

from migration import handoff, services
from migration.exchange import flow
from sync import crypto
from sync.identity import fingerprint, message_key
from sync.models import FolderState, MailAccount, SkippedMessage, SyncedMessage
from sync.runs import sync_account
from tests.fakes.ews import M, OPERATIONS, _error
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews  # noqa: F401

pytestmark = pytest.mark.django_db
NOW = datetime.now(timezone.utc)
V2_POLL = NOW - timedelta(hours=1)
OLD = datetime(2020, 3, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def account(make_account, user):
    """A V2 account on Exchange; V2 polled its INBOX an hour ago."""
    account = make_account(user, "anna@firma.test", provider_kind="exchange", username="anna",
                           secret_encrypted=crypto.encrypt_json({"password": "alt-v2"}))
    FolderState.objects.create(account=account, name="INBOX", v2_high_water=V2_POLL)
    return account


def migrate(account, fake):
    """What the migration's worker does: verify (every folder, auth settled), then the handoff."""
    connection = {"ews_url": fake.url, "username": EWS_USER, "auth_type": "basic", "ca_pem": fake.cert_pem}
    connection, cursors = flow.verify(connection, account.address, EWS_PASSWORD)
    migration = services.start_migration(user=account.owner, account=account)
    migration.connection, migration.cursors = connection, cursors
    migration.secret_encrypted = crypto.encrypt_json({"password": EWS_PASSWORD})
    handoff.hand_over(migration)
    account.refresh_from_db()
    return cursors


def rows(account):
    return sorted(SyncedMessage.objects.filter(account=account).values_list("subject", "folder"))


def folder_names(account):
    return sorted(FolderState.objects.filter(account=account).values_list("name", flat=True))


def add_tree(fake):
    """Nested mail folders, a folder without FolderClass, and folders below trash and the calendar."""
    fake.add_folder("projekte", "Projekte", parent="inbox")
    fake.add_folder("kunden", "Kunden", parent="projekte")
    fake.add_folder("archiv", "Archiv")
    fake.add_folder("ohne-klasse", "Alt", folder_class="")
    fake.add_folder("papierkorb-alt", "Alte Projekte", parent="deleteditems")
    fake.add_folder("geburtstage", "Geburtstage", parent="calendar", folder_class="IPF.Appointment")


def test_it_syncs_every_mail_folder_and_none_of_trash_junk_drafts_outbox(account, fake_ews):
    add_tree(fake_ews)
    fake_ews.folder_page_size = 3  # FindFolder answers in pages
    for key in ("inbox", "sentitems", "projekte", "kunden", "archiv", "ohne-klasse", "deleteditems",
                "papierkorb-alt", "junkemail", "drafts", "outbox", "conflicts", "conversationhistory"):
        fake_ews.deliver(key, subject=f"in {key}")
    cursors = migrate(account, fake_ews)
    expected_folders = ["Alt", "Archiv", "INBOX", "INBOX/Projekte", "INBOX/Projekte/Kunden", "Sent"]
    assert sorted(cursors) == expected_folders
    assert cursors["INBOX/Projekte"]["ews_folder_id"] == fake_ews.folder_id("projekte")

    assert sync_account(account.pk) == 6
    assert rows(account) == [("in archiv", "Archiv"), ("in inbox", "INBOX"), ("in kunden", "INBOX/Projekte/Kunden"),
                             ("in ohne-klasse", "Alt"), ("in projekte", "INBOX/Projekte"), ("in sentitems", "Sent")]
    assert folder_names(account) == expected_folders
    inbox = FolderState.objects.get(account=account, name="INBOX")
    # V2's row became the inbox's: its history stays.
    assert inbox.ews_folder_id == fake_ews.folder_id("inbox") and inbox.v2_high_water == V2_POLL
    assert sync_account(account.pk) == 0
    account.refresh_from_db()
    assert (account.status, account.last_sync_error) == ("active", "")


def test_it_syncs_folders_of_every_mail_class_and_none_of_calendars_contacts_tasks_notes_feeds(account, fake_ews):
    """Mail lives in folders of class IPF.Note, IPF.Note.* (a folder with a home page: IPF.Note.OutlookHomepage),
    IPF.Imap (imported from the PST of an Outlook IMAP profile) and none; calendars, contacts, tasks, notes,
    journals (with their subclasses) and Outlook's RSS Feeds folder hold no mail."""
    mail = [("imap", "Posteingang (IMAP)", "msgfolderroot", "IPF.Imap"),
            ("imap-sent", "Gesendet", "imap", "IPF.Imap"),
            ("homepage", "Kundenportal", "inbox", "IPF.Note.OutlookHomepage"),
            ("homepage-top", "Intranet", "msgfolderroot", "IPF.Note.OutlookHomepage"),
            ("custom", "Ablage 2019", "msgfolderroot", "IPF.Note.Archiv.Custom"),
            ("casing", "Klein", "msgfolderroot", "ipf.note")]
    not_mail = [("birthdays", "Geburtstage", "msgfolderroot", "IPF.Appointment.Birthday"),
                ("quick", "Schnellkontakte", "contacts", "IPF.Contact.MOC.QuickContacts"),
                ("task-list", "Aufgabenliste", "msgfolderroot", "IPF.Task"),
                ("sticky", "Notizen 2", "msgfolderroot", "IPF.StickyNote"),
                ("journal-2", "Journal 2", "msgfolderroot", "IPF.Journal"),
                ("config", "Quick Step Settings", "msgfolderroot", "IPF.Configuration"),
                ("notes-lookalike", "Notizen", "msgfolderroot", "IPF.Notes"),
                ("feed", "Heise online", "rssfeeds", "IPF.Note.OutlookHomepage")]
    for key, name, parent, folder_class in mail + not_mail:
        fake_ews.add_folder(key, name, parent=parent, folder_class=folder_class)
    fake_ews.rename_folder("rssfeeds", "RSS-Feeds")  # a German mailbox's RSS Feeds folder
    for key in [key for key, *_rest in mail + not_mail] + ["calendar", "contacts", "tasks", "notes", "journal",
                                                          "rssfeeds", "inbox"]:
        fake_ews.deliver(key, subject=f"in {key}")
    cursors = migrate(account, fake_ews)
    expected_folders = ["Ablage 2019", "INBOX", "INBOX/Kundenportal", "Intranet", "Klein", "Posteingang (IMAP)",
                        "Posteingang (IMAP)/Gesendet", "Sent"]
    assert sorted(cursors) == expected_folders
    assert sync_account(account.pk) == 7
    assert rows(account) == [("in casing", "Klein"), ("in custom", "Ablage 2019"), ("in homepage", "INBOX/Kundenportal"),
                             ("in homepage-top", "Intranet"), ("in imap", "Posteingang (IMAP)"),
                             ("in imap-sent", "Posteingang (IMAP)/Gesendet"), ("in inbox", "INBOX")]
    assert folder_names(account) == expected_folders
    assert sync_account(account.pk) == 0


def test_it_recognises_special_folders_by_id_in_a_german_mailbox(account, fake_ews):
    for key, name in [("inbox", "Posteingang"), ("sentitems", "Gesendete Elemente"),
                      ("deleteditems", "Gelöschte Elemente"), ("junkemail", "Junk-E-Mail"), ("drafts", "Entwürfe"),
                      ("outbox", "Postausgang"), ("syncissues", "Synchronisierungsprobleme")]:
        fake_ews.rename_folder(key, name)
        fake_ews.deliver(key, subject=name)
    # A user's own folder with a name like a special one is mail like any other.
    fake_ews.add_folder("eigener", "Papierkorb", parent="inbox")
    fake_ews.deliver("eigener", subject="eigener Ordner")
    migrate(account, fake_ews)
    assert sync_account(account.pk) == 3
    assert rows(account) == [("Gesendete Elemente", "Sent"), ("Posteingang", "INBOX"),
                             ("eigener Ordner", "INBOX/Papierkorb")]


def test_it_syncs_a_folder_added_after_the_switch_from_its_first_message(account, fake_ews):
    migrate(account, fake_ews)
    fake_ews.deliver("inbox", subject="vorher")
    assert sync_account(account.pk) == 1
    # Created later, filled with old mail (moved in by a rule or by hand).
    fake_ews.add_folder("neu", "Neu", parent="inbox")
    fake_ews.deliver("neu", subject="alt 1", received=OLD)
    fake_ews.deliver("neu", subject="alt 2", received=OLD + timedelta(days=1))
    assert sync_account(account.pk) == 2
    assert sync_account(account.pk) == 0
    fake_ews.deliver("neu", subject="später")
    assert sync_account(account.pk) == 1
    assert rows(account) == [("alt 1", "INBOX/Neu"), ("alt 2", "INBOX/Neu"), ("später", "INBOX/Neu"),
                             ("vorher", "INBOX")]


def test_a_renamed_or_moved_folder_keeps_its_row_and_state(account, fake_ews):
    add_tree(fake_ews)
    fake_ews.deliver("projekte", subject="p1")
    fake_ews.deliver("kunden", subject="k1")
    migrate(account, fake_ews)
    assert sync_account(account.pk) == 2
    before = {row.ews_folder_id: (row.pk, row.ews_sync_state) for row in FolderState.objects.filter(account=account)}

    fake_ews.rename_folder("projekte", "Aufträge", parent="archiv")  # its child moves along
    fake_ews.calls.clear()
    assert sync_account(account.pk) == 0
    assert "GetItem" not in fake_ews.calls  # no re-import: the states went on
    after = {row.ews_folder_id: (row.pk, row.ews_sync_state) for row in FolderState.objects.filter(account=account)}
    assert after == before
    assert folder_names(account) == ["Alt", "Archiv", "Archiv/Aufträge", "Archiv/Aufträge/Kunden", "INBOX", "Sent"]

    fake_ews.deliver("kunden", subject="k2")
    assert sync_account(account.pk) == 1
    assert rows(account) == [("k1", "INBOX/Projekte/Kunden"), ("k2", "Archiv/Aufträge/Kunden"),
                             ("p1", "INBOX/Projekte")]


def test_two_folders_that_swap_names_keep_their_states(account, fake_ews):
    fake_ews.add_folder("a", "A")
    fake_ews.add_folder("b", "B")
    fake_ews.deliver("a", subject="in a")
    migrate(account, fake_ews)
    assert sync_account(account.pk) == 1
    fake_ews.rename_folder("a", "Zwischen")
    fake_ews.rename_folder("b", "A")
    fake_ews.rename_folder("a", "B")
    assert sync_account(account.pk) == 0
    ids = dict(FolderState.objects.filter(account=account, name__in=["A", "B"]).values_list("name", "ews_folder_id"))
    assert ids == {"A": fake_ews.folder_id("b"), "B": fake_ews.folder_id("a")}
    fake_ews.deliver("a", subject="wieder in a")
    assert sync_account(account.pk) == 1
    assert rows(account) == [("in a", "A"), ("wieder in a", "B")]


def test_a_deleted_folder_loses_its_row_and_the_crm_keeps_its_mail(account, fake_ews):
    add_tree(fake_ews)
    fake_ews.deliver("kunden", subject="k1")
    migrate(account, fake_ews)
    assert sync_account(account.pk) == 1
    fake_ews.delete_folder("projekte")  # with its child "Kunden"
    assert sync_account(account.pk) == 0
    assert folder_names(account) == ["Alt", "Archiv", "INBOX", "Sent"]
    assert rows(account) == [("k1", "INBOX/Projekte/Kunden")]
    account.refresh_from_db()
    assert account.last_sync_error == ""


def test_an_old_message_moved_into_the_inbox_before_the_switch_is_imported_once(account, fake_ews):
    fake_ews.add_folder("archiv", "Archiv")
    known = fake_ews.deliver("inbox", subject="von V2", received=V2_POLL - timedelta(minutes=5))
    SyncedMessage.objects.create(account=account, dedup_key=known["message_id"].strip("<>"), folder="INBOX",
                                 message_id=known["message_id"], subject="von V2", imported_by="v2")
    old = fake_ews.deliver("archiv", subject="alt, verschoben", received=OLD, sent=OLD, message_id="")
    # After V2's last poll the user moves it into the inbox; V2 polled by date and never saw it.
    fake_ews.move(old, "inbox")
    fake_ews.deliver("archiv", subject="alt, im Archiv", received=OLD)
    migrate(account, fake_ews)
    assert sync_account(account.pk) == 2
    assert sync_account(account.pk) == 0
    assert rows(account) == [("alt, im Archiv", "Archiv"), ("alt, verschoben", "INBOX"), ("von V2", "INBOX")]
    assert SyncedMessage.objects.get(subject="von V2").imported_by == "v2"
    # Moved back after the switch: a Delete in the inbox, a create in Archiv with a new id; still one row.
    fake_ews.move(fake_ews.folders["inbox"][-1], "archiv")
    assert sync_account(account.pk) == 0
    assert rows(account) == [("alt, im Archiv", "Archiv"), ("alt, verschoben", "INBOX"), ("von V2", "INBOX")]


def test_it_stores_items_without_internet_message_id_with_the_fallback_identity(account, fake_ews):
    sent = datetime(2025, 7, 1, 7, 0, 0, tzinfo=timezone.utc)
    fake_ews.add_folder("archiv", "Archiv")
    first = fake_ews.deliver("inbox", subject="Ohne ID", message_id="", sent=sent, received=sent + timedelta(minutes=3),
                             sender="Kunde@Example.org", sender_name="Kunde GmbH",
                             to=[("Anna", "anna@firma.test")], cc=[("Müller, Jürgen", "jm@firma.test")])
    fake_ews.deliver("inbox", subject="Auch ohne ID", message_id="", sent=sent)
    # The same message in a second folder: delivered later, same Date, sender and subject.
    fake_ews.deliver("archiv", subject="ohne  id", message_id="", sent=sent, received=sent + timedelta(days=2),
                     sender="kunde@example.org")
    migrate(account, fake_ews)
    assert sync_account(account.pk) == 2
    stored = SyncedMessage.objects.get(account=account, subject="Ohne ID")
    digest = fingerprint(sent_at=sent, sender="kunde@example.org", subject="ohne id")
    assert (stored.dedup_key, stored.fingerprint) == (message_key(message_id="", fingerprint=digest), digest)
    assert stored.dedup_key.startswith("sha256:") and stored.message_id == ""
    assert (stored.sender, stored.recipients, stored.cc) == (
        "Kunde GmbH <Kunde@Example.org>", "Anna <anna@firma.test>", '"Müller, Jürgen" <jm@firma.test>')
    assert (stored.sent_at, stored.received_at, stored.provider_id) == (sent, first["received"], first["id"])
    assert rows(account) == [("Auch ohne ID", "INBOX"), ("Ohne ID", "INBOX")]


@pytest.mark.parametrize("code", ["ErrorItemCorrupt", "ErrorCorruptData", "ErrorAccessDenied",
                                  "ErrorInternalServerError"])
def test_an_item_exchange_cannot_read_is_recorded_and_the_rest_syncs(account, fake_ews, code):
    migrate(account, fake_ews)
    fake_ews.deliver("inbox", subject="davor")
    broken = fake_ews.deliver("inbox", subject="kaputt")
    broken["get_error"] = code  # e.g. IRM-protected (access denied) or a damaged item
    fake_ews.deliver("inbox", subject="danach")
    assert sync_account(account.pk) == 2
    assert rows(account) == [("danach", "INBOX"), ("davor", "INBOX")]
    skipped = SkippedMessage.objects.get(account=account)
    assert (skipped.folder, skipped.reference, skipped.reason, skipped.detail) == ("INBOX", broken["id"],
                                                                                  "unreadable", code)
    account.refresh_from_db()
    assert (account.status, account.last_sync_error) == ("active", "")
    # The state moved past it: it is not read again and again.
    fake_ews.calls.clear()
    assert sync_account(account.pk) == 0 and "GetItem" not in fake_ews.calls


def test_an_item_deleted_between_sync_and_fetch_is_left_out_quietly(account, fake_ews):
    migrate(account, fake_ews)
    gone = fake_ews.deliver("inbox", subject="gleich weg")
    gone["get_error"] = "ErrorItemNotFound"
    fake_ews.deliver("inbox", subject="bleibt")
    assert sync_account(account.pk) == 1
    assert rows(account) == [("bleibt", "INBOX")] and not SkippedMessage.objects.exists()


def test_a_busy_server_fails_the_run_and_nothing_is_lost(account, fake_ews):
    migrate(account, fake_ews)
    assert sync_account(account.pk) == 0
    busy = fake_ews.deliver("inbox", subject="wartet")
    busy["get_error"] = "ErrorServerBusy"
    state = FolderState.objects.get(account=account, name="INBOX").ews_sync_state
    assert sync_account(account.pk) == 0
    account.refresh_from_db()
    assert account.last_sync_error == "protocol" and not SkippedMessage.objects.exists()
    assert FolderState.objects.get(account=account, name="INBOX").ews_sync_state == state
    del busy["get_error"]
    assert sync_account(account.pk) == 1
    account.refresh_from_db()
    assert (account.status, account.last_sync_error) == ("active", "")


def test_rows_of_the_earlier_engine_are_taken_over_by_name_and_read_whole_once(user, make_account, fake_ews):
    """Accounts moved to V3 before every folder was synced have "INBOX" and "Sent" rows without FolderIds;
    that engine's first run read a date window only, so an old message moved in before the switch is missing."""
    account = make_account(user, "anna@firma.test", provider_kind="exchange", engine="v3", username=EWS_USER,
                           ews_url=fake_ews.url, ews_auth_type="basic", tls_ca_pem=fake_ews.cert_pem,
                           secret_encrypted=crypto.encrypt_json({"password": EWS_PASSWORD}))
    had = fake_ews.deliver("inbox", subject="schon da")
    SyncedMessage.objects.create(account=account, dedup_key=had["message_id"].strip("<>"), folder="INBOX",
                                 message_id=had["message_id"], subject="schon da", imported_by="v3")
    fake_ews.deliver("inbox", subject="verpasst", received=OLD)
    for name, key in (("INBOX", "inbox"), ("Sent", "sentitems")):
        seen = max([item["seq"] for item in fake_ews.folders[key]], default=0)
        FolderState.objects.create(account=account, name=name, ews_sync_state=fake_ews._state(seen, key),
                                   v3_synced_at=NOW)
    fake_ews.add_folder("archiv", "Archiv")
    fake_ews.deliver("archiv", subject="im Archiv")
    fake_ews.deliver("inbox", subject="neu")
    assert sync_account(account.pk) == 3
    assert rows(account) == [("im Archiv", "Archiv"), ("neu", "INBOX"), ("schon da", "INBOX"), ("verpasst", "INBOX")]
    states = dict(FolderState.objects.filter(account=account).values_list("name", "ews_folder_id"))
    assert states == {"INBOX": fake_ews.folder_id("inbox"), "Sent": fake_ews.folder_id("sentitems"),
                      "Archiv": fake_ews.folder_id("archiv")}
    fake_ews.calls.clear()
    assert sync_account(account.pk) == 0 and "GetItem" not in fake_ews.calls  # once: from now on by state
    assert MailAccount.objects.get(pk=account.pk).last_sync_error == ""


def throttle(monkeypatch, fake, folder_key: str, every: int) -> dict:
    """Exchange throttles SyncFolderItems of one folder: every `every`-th call answers ErrorServerBusy."""
    original, seen = OPERATIONS["SyncFolderItems"], {"calls": 0, "busy": 0}

    def sync_folder_items(server, request):
        if server._key_of(request.find(f"{{{M}}}SyncFolderId")[0]) == folder_key:
            seen["calls"] += 1
            if seen["calls"] % every == 0:
                seen["busy"] += 1
                # Exchange's error answers of SyncFolderItems carry an empty SyncState (exchangelib reads it first).
                return _error("SyncFolderItems", "ErrorServerBusy", "The server cannot service this request now.",
                              extra="<m:SyncState/><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange>")
        return original(server, request)

    monkeypatch.setitem(OPERATIONS, "SyncFolderItems", sync_folder_items)
    return seen


def test_it_resumes_an_interrupted_first_walk_of_a_folder_where_it_stopped(account, fake_ews, monkeypatch, settings):
    """A big folder's first whole-folder walk that Exchange throttles near its end finishes over several
    runs: each run goes on from the last page it stored, nothing is fetched twice and nothing is lost."""
    settings.EWS_RETRY_BUDGET = 0  # throttled beyond what the bounded retry waits for: the run gives up
    fake_ews.add_folder("archiv", "Archiv")
    for number in range(10):
        fake_ews.deliver("archiv", subject=f"alt {number}", received=OLD + timedelta(days=number))
    migrate(account, fake_ews)  # the handoff's state (verify walked the folder) is not the first run's progress
    fake_ews.page_size = 2
    busy = throttle(monkeypatch, fake_ews, "archiv", every=3)  # two pages per run, then "server busy"
    fetched = []

    def added_by_run():  # rows, not sync_account's count: a run that fails counts nothing of the failed folder
        before = SyncedMessage.objects.filter(account=account).count()
        fake_ews.calls.clear()
        sync_account(account.pk)
        fetched.append(fake_ews.calls.count("GetItem"))
        return SyncedMessage.objects.filter(account=account).count() - before

    assert added_by_run() == 4
    archive = FolderState.objects.get(account=account, name="Archiv")
    assert archive.v3_synced_at is None and MailAccount.objects.get(pk=account.pk).last_sync_error == "protocol"
    fake_ews.deliver("archiv", subject="neu während des ersten Laufs")
    assert added_by_run() == 4  # goes on after the fourth message instead of starting over
    assert added_by_run() == 3  # the last old ones and the new one: the walk is complete
    assert busy["busy"] == 2 and fetched == [2, 2, 2]  # one GetItem per page, no page fetched twice
    archive.refresh_from_db()
    assert archive.v3_synced_at is not None and not archive.ews_sync_state.startswith("walk:")
    assert sorted(subject for subject, folder in rows(account) if folder == "Archiv") == sorted(
        [f"alt {number}" for number in range(10)] + ["neu während des ersten Laufs"])
    assert SyncedMessage.objects.filter(account=account).count() == 11
    account.refresh_from_db()
    assert account.last_sync_error == ""
    fake_ews.calls.clear()
    assert sync_account(account.pk) == 0 and "GetItem" not in fake_ews.calls


def test_it_starts_the_first_walk_empty_whatever_state_the_handoff_left(account, fake_ews):
    """The handoff stores the state of verify's walk; the first run still reads the folder whole, and a
    state from a walk that an earlier run cut short is used only while the folder was never read whole."""
    fake_ews.deliver("inbox", subject="vor dem Wechsel", received=OLD)
    migrate(account, fake_ews)
    inbox = FolderState.objects.get(account=account, name="INBOX")
    assert inbox.ews_sync_state and inbox.v3_synced_at is None  # verify's state, at the end of the folder
    assert sync_account(account.pk) == 1
    assert rows(account) == [("vor dem Wechsel", "INBOX")]
