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


def test_it_skips_folders_by_their_special_use_flags(make_account, user, special_use_dovecot, settings):
    from sync import crypto

    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    settings.MAIL_TLS_CA_FILE = str(special_use_dovecot.cert_path)
    address, password = special_use_dovecot.take_mailbox()
    account = make_account(user, address, imap_host="127.0.0.1", imap_port=special_use_dovecot.tls_port,
                           imap_security="ssl", username=address,
                           secret_encrypted=crypto.encrypt_json({"password": password}))
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
    from sync.imap import client as imap

    _switch_to_v3(imap_account, dovecot, mailbox)

    def status_without_uidvalidity(connection, folder):
        raise KeyError(b"UIDVALIDITY")  # a server whose STATUS answer lacks an item we asked for

    monkeypatch.setattr(imap, "folder_cursor", status_without_uidvalidity)
    assert sync_account(imap_account.pk) == 0
    imap_account.refresh_from_db()
    assert (imap_account.status, imap_account.last_sync_error) == ("error", "sync_internal")
    client.force_login(user)
    page = client.get(reverse("settings-mail")).content.decode()
    assert "unerwarteten Fehler" in page
