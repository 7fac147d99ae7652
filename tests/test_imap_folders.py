"""V3 IMAP on a real Dovecot: every folder every run, expunges between SEARCH and FETCH,
servers with and without SPECIAL-USE, UIDVALIDITY changes, renames and unexpected failures."""

from datetime import datetime, timezone

import pytest
from django.urls import reverse
from imapclient import IMAPClient

from portal.devservers import Dovecot, make_message
from sync.models import FolderState, SkippedMessage, SyncedMessage
from sync.runs import sync_account
from tests.test_sync_engines import _switch_to_v3

pytestmark = pytest.mark.django_db


def subjects(account):
    return sorted(SyncedMessage.objects.filter(account=account).values_list("subject", flat=True))


def test_it_skips_a_message_expunged_between_search_and_fetch(imap_account, dovecot, mailbox, mail_settings,
                                                             monkeypatch):
    address = mailbox[0]
    dovecot.deliver(address, make_message(subject="eins"), make_message(subject="weg"), make_message(subject="drei"))
    _switch_to_v3(imap_account, dovecot, mailbox)
    real_fetch = IMAPClient.fetch
    expunged = []

    def fetch_after_another_client_expunged(self, messages, data, modifiers=None):
        if not expunged:
            other = dovecot.client(address)
            other.select_folder("INBOX")
            victim = other.search(["SUBJECT", "weg"])
            other.delete_messages(victim)
            other.expunge()
            other.logout()
            expunged.extend(victim)
        # Dovecot now answers the victim with NIL parts (INTERNALDATE 1970, no headers).
        return real_fetch(self, messages, data, modifiers)

    monkeypatch.setattr(IMAPClient, "fetch", fetch_after_another_client_expunged)
    assert sync_account(imap_account.pk) == 2
    assert subjects(imap_account) == ["drei", "eins"]
    state = FolderState.objects.get(account=imap_account, name="INBOX")
    assert state.last_seen_uid == 3  # the cursor moved past the expunged message
    imap_account.refresh_from_db()
    assert (imap_account.status, imap_account.last_sync_error) == ("active", "")
    assert not SkippedMessage.objects.exists()  # gone is not an error


def test_it_syncs_a_folder_created_after_the_switch_from_its_first_message(imap_account, dovecot, mailbox,
                                                                          mail_settings):
    _switch_to_v3(imap_account, dovecot, mailbox)
    assert sync_account(imap_account.pk) == 0
    old = datetime(2019, 5, 1, tzinfo=timezone.utc)
    dovecot.deliver(mailbox[0], make_message(subject="alt im neuen Ordner", date=old), when=old, folder="Projekte")
    dovecot.deliver(mailbox[0], make_message(subject="neu im neuen Ordner"), folder="Projekte")
    assert sync_account(imap_account.pk) == 2
    assert subjects(imap_account) == ["alt im neuen Ordner", "neu im neuen Ordner"]
    assert SyncedMessage.objects.get(subject="alt im neuen Ordner").folder == "Projekte"
    assert sync_account(imap_account.pk) == 0


NOT_FOR_THE_CRM = ["Junk", "Trash", "Drafts", "Spam", "Papierkorb", "Entwürfe", "Gelöschte Elemente",
                   "Junk-E-Mail", "Postausgang", "Papierkorb.Alt"]


def test_it_skips_trash_junk_and_drafts_by_name_on_a_server_without_special_use(imap_account, dovecot, mailbox,
                                                                               mail_settings):
    # This Dovecot announces no SPECIAL-USE: the names are all there is.
    _switch_to_v3(imap_account, dovecot, mailbox)
    for folder in NOT_FOR_THE_CRM:
        dovecot.deliver(mailbox[0], make_message(subject=f"in {folder}"), folder=folder)
    for folder in ("INBOX", "Sent", "Archiv", "Archiv.2024"):
        dovecot.deliver(mailbox[0], make_message(subject=f"in {folder}"), folder=folder)
    sync_account(imap_account.pk)
    assert subjects(imap_account) == ["in Archiv", "in Archiv.2024", "in INBOX", "in Sent"]
    assert set(FolderState.objects.filter(account=imap_account).values_list("name", flat=True)) == {
        "INBOX", "Sent", "Archiv", "Archiv.2024"}


SPECIAL_USE = r"""
namespace inbox {
  inbox = yes
  separator = /
  mailbox "Werbeablage" {
    special_use = \Junk
    auto = create
  }
  mailbox "Rundablage" {
    special_use = \Trash
    auto = create
  }
  mailbox "Vorlagen in Arbeit" {
    special_use = \Drafts
    auto = create
  }
  mailbox "Alles" {
    special_use = \All
    auto = create
  }
  mailbox "Gesendet" {
    special_use = \Sent
    auto = create
  }
}
"""


@pytest.fixture(scope="module")
def special_use_dovecot():
    server = Dovecot({}, pool_size=3, extra_config=SPECIAL_USE).start()
    yield server
    server.stop()


def account_on(server, make_account, user, settings):
    """A V2 account of `user` on a Dovecot of its own configuration: (account, address, password)."""
    from sync import crypto

    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    settings.MAIL_TLS_CA_FILE = str(server.cert_path)
    address, password = server.take_mailbox()
    account = make_account(user, address, imap_host="127.0.0.1", imap_port=server.tls_port, imap_security="ssl",
                           username=address, secret_encrypted=crypto.encrypt_json({"password": password}))
    return account, address, password


def test_it_skips_folders_by_their_special_use_flags(make_account, user, special_use_dovecot, settings):
    account, address, password = account_on(special_use_dovecot, make_account, user, settings)
    _switch_to_v3(account, special_use_dovecot, (address, password))
    for folder in ("Werbeablage", "Rundablage", "Vorlagen in Arbeit", "Alles", "Gesendet", "INBOX"):
        special_use_dovecot.deliver(address, make_message(subject=f"in {folder}"), folder=folder)
    sync_account(account.pk)
    assert subjects(account) == ["in Gesendet", "in INBOX"]


def test_it_reads_a_recreated_folder_again_after_its_uidvalidity_changed(imap_account, dovecot, mailbox,
                                                                        mail_settings):
    address = mailbox[0]
    _switch_to_v3(imap_account, dovecot, mailbox)
    first = [make_message(subject="eins"), make_message(subject="zwei")]
    dovecot.deliver(address, *first, folder="Projekte")
    assert sync_account(imap_account.pk) == 2
    before = FolderState.objects.get(account=imap_account, name="Projekte").uidvalidity
    client = dovecot.client(address)
    client.delete_folder("Projekte")
    client.logout()
    dovecot.deliver(address, *first, make_message(subject="drei"), folder="Projekte")
    assert sync_account(imap_account.pk) == 1  # the same two again are known; only "drei" is new
    assert FolderState.objects.get(account=imap_account, name="Projekte").uidvalidity != before
    assert subjects(imap_account) == ["drei", "eins", "zwei"]


def test_it_keeps_the_state_of_a_renamed_folder_and_stops_a_deleted_one(imap_account, dovecot, mailbox,
                                                                        mail_settings):
    address = mailbox[0]
    _switch_to_v3(imap_account, dovecot, mailbox)
    dovecot.deliver(address, make_message(subject="im Projekt"), folder="Projekte")
    dovecot.deliver(address, make_message(subject="bald gelöscht"), folder="Alt")
    assert sync_account(imap_account.pk) == 2
    state = FolderState.objects.get(account=imap_account, name="Projekte")
    client = dovecot.client(address)
    client.rename_folder("Projekte", "Projekte 2024")
    client.delete_folder("Alt")
    client.logout()
    dovecot.deliver(address, make_message(subject="nach dem Umbenennen"), folder="Projekte 2024")
    assert sync_account(imap_account.pk) == 1
    renamed = FolderState.objects.get(account=imap_account, name="Projekte 2024")
    assert renamed.pk == state.pk and renamed.uidvalidity == state.uidvalidity
    assert not FolderState.objects.filter(account=imap_account, name__in=["Projekte", "Alt"]).exists()
    assert subjects(imap_account) == ["bald gelöscht", "im Projekt", "nach dem Umbenennen"]  # nothing is lost


def test_it_records_an_unexpected_failure_and_shows_it(imap_account, dovecot, mailbox, mail_settings, monkeypatch,
                                                      client, user):
    from sync.imap import status

    _switch_to_v3(imap_account, dovecot, mailbox)

    def status_without_uidvalidity(items):
        raise KeyError(b"UIDVALIDITY")  # a server whose STATUS answer lacks an item we asked for

    monkeypatch.setattr(status, "cursor_of", status_without_uidvalidity)
    assert sync_account(imap_account.pk) == 0
    imap_account.refresh_from_db()
    assert (imap_account.status, imap_account.last_sync_error) == ("error", "sync_internal")
    client.force_login(user)
    page = client.get(reverse("settings-mail")).content.decode()
    assert "unerwarteten Fehler" in page


def test_it_syncs_customer_folders_whose_names_only_look_like_trash(imap_account, dovecot, mailbox, mail_settings):
    # Names are matched where clients create trash/junk/drafts (top level, below INBOX), never deeper.
    _switch_to_v3(imap_account, dovecot, mailbox)
    for folder in ("Projekte.Entwurf", "Werbung", "Kunden.Bin", "Archiv.Gelöscht", "Kunden.Spam", "INBOX.Trash"):
        dovecot.deliver(mailbox[0], make_message(subject=f"in {folder}"), folder=folder)
    sync_account(imap_account.pk)
    assert subjects(imap_account) == ["in Archiv.Gelöscht", "in Kunden.Bin", "in Kunden.Spam",
                                      "in Projekte.Entwurf", "in Werbung"]


def _maildir(dovecot, address):
    return next(p for p in (dovecot.base / "mail").iterdir() if p.name == address) / "Maildir"


def test_it_syncs_the_other_folders_when_the_server_cannot_open_one(imap_account, dovecot, mailbox, mail_settings,
                                                                    client, user):
    import os

    _switch_to_v3(imap_account, dovecot, mailbox)
    dovecot.deliver(mailbox[0], make_message(subject="im Archiv"), folder="Archiv")
    dovecot.deliver(mailbox[0], make_message(subject="gesperrt"), folder="Abgelegt")
    broken = _maildir(dovecot, mailbox[0]) / ".Abgelegt"
    os.chmod(broken, 0)  # what a lost permission or an ACL without 'r' looks like to the server
    try:
        dovecot.deliver(mailbox[0], make_message(subject="neu im Posteingang"))
        sync_account(imap_account.pk)
    finally:
        os.chmod(broken, 0o700)
    assert subjects(imap_account) == ["im Archiv", "neu im Posteingang"]
    imap_account.refresh_from_db()
    assert (imap_account.status, imap_account.last_sync_error) == ("active", "")
    skipped = SkippedMessage.objects.get(account=imap_account)
    assert (skipped.folder, skipped.reference, skipped.reason) == ("Abgelegt", "folder", "folder_unreadable")
    assert skipped.get_reason_display() == "Ordner nicht lesbar"
    # The user is told that something is missing, not just "Aktiv".
    client.force_login(user)
    page = client.get(reverse("settings-mail")).content.decode()
    assert "Nicht übernommene Nachrichten oder Ordner: 1." in page
    page = client.get(reverse("settings-mail"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Messages or folders not taken over: 1." in page
    sync_account(imap_account.pk)  # readable again: it is synced
    assert "gesperrt" in subjects(imap_account)


def test_it_records_a_message_the_server_cannot_deliver_and_syncs_the_rest(imap_account, dovecot, mailbox,
                                                                          mail_settings):
    _switch_to_v3(imap_account, dovecot, mailbox)
    dovecot.deliver(mailbox[0], make_message(subject="eins"), make_message(subject="kaputt"),
                    make_message(subject="drei"))
    maildir = _maildir(dovecot, mailbox[0])
    files = list((maildir / "cur").iterdir()) + list((maildir / "new").iterdir())
    victim = next(path for path in files if b"kaputt" in path.read_bytes())
    victim.write_bytes(victim.read_bytes()[:40])  # a truncated file: a full disk, a broken restore
    assert sync_account(imap_account.pk) == 2
    assert subjects(imap_account) == ["drei", "eins"]
    state = FolderState.objects.get(account=imap_account, name="INBOX")
    assert state.last_seen_uid == 3  # past the bad message: it is not fetched on every run
    skipped = SkippedMessage.objects.get(account=imap_account)
    assert (skipped.folder, skipped.reference, skipped.reason) == ("INBOX", f"uid:{state.uidvalidity}:2",
                                                                   "unreadable")
    imap_account.refresh_from_db()
    assert (imap_account.status, imap_account.last_sync_error) == ("active", "")


LONG_NAMES = r"""
namespace inbox {
  inbox = yes
  separator = /
  location = maildir:~/Maildir:LAYOUT=fs
}
"""


@pytest.fixture(scope="module")
def fs_dovecot():
    server = Dovecot({}, pool_size=2, extra_config=LONG_NAMES).start()
    yield server
    server.stop()


def test_it_reports_a_folder_path_too_long_to_keep_and_syncs_the_rest(make_account, user, fs_dovecot, settings):
    from migration.imap import flow
    from sync.imap.client import ImapSettings

    account, address, password = account_on(fs_dovecot, make_account, user, settings)
    deep = "/".join(["Kunden", "Müller Maschinenbau GmbH & Co. KG " * 5, "Projekt Erweiterung Halle 3 " * 6,
                     "Korrespondenz Bauleitung " * 9])
    assert len(deep) > 500
    fs_dovecot.deliver(address, make_message(subject="tief"), folder=deep)
    # The migration's verify leaves it out instead of failing the handoff.
    cursors = flow.verify(ImapSettings("127.0.0.1", fs_dovecot.tls_port, "ssl", address), password)
    assert deep not in cursors and "INBOX" in cursors
    _switch_to_v3(account, fs_dovecot, (address, password))
    fs_dovecot.deliver(address, make_message(subject="im Posteingang"))
    sync_account(account.pk)
    assert subjects(account) == ["im Posteingang"]
    skipped = SkippedMessage.objects.get(account=account)
    assert (skipped.reference, skipped.reason) == ("folder", "folder_name_too_long")


def test_it_keeps_polling_v2_past_a_message_the_server_cannot_deliver(imap_account, dovecot, mailbox, mail_settings):
    dovecot.deliver(mailbox[0], make_message(subject="eins"), make_message(subject="kaputt"))
    maildir = _maildir(dovecot, mailbox[0])
    files = list((maildir / "cur").iterdir()) + list((maildir / "new").iterdir())
    victim = next(path for path in files if b"kaputt" in path.read_bytes())
    victim.write_bytes(victim.read_bytes()[:40])
    assert sync_account(imap_account.pk) == 1  # V2
    assert subjects(imap_account) == ["eins"]
    assert SkippedMessage.objects.get(account=imap_account).reason == "unreadable"
    imap_account.refresh_from_db()
    assert (imap_account.engine, imap_account.status, imap_account.last_sync_error) == ("v2", "active", "")
