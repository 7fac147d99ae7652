"""What a poll costs: IMAP round trips, commands and queries of an unchanged sync, counted through a proxy in
front of the real Dovecot, with LIST-STATUS (RFC 5819) and without it (pipelined STATUS); one TLS context
per process."""

import shutil
import ssl

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from migration import handoff, services
from migration.imap import flow
from portal.devservers import make_message
from sync import crypto
from sync.imap import client as imap_client
from sync.imap.client import ImapSettings
from sync.models import FolderState, MailAccount, SyncedMessage
from sync.runs import sync_account
from tests.fakes.imap_proxy import RewritingImapProxy, keep, without_capability

pytestmark = pytest.mark.django_db

SERVERS = {"list-status": keep, "pipelined-status": without_capability(b"LIST-STATUS")}


@pytest.fixture(params=sorted(SERVERS))
def proxy(request, dovecot):
    proxy = RewritingImapProxy(dovecot, SERVERS[request.param])
    yield proxy
    proxy.close()


def make_folders(dovecot, address: str, count: int) -> None:
    """INBOX and count - 1 more folders, each with one message (a mailbox with `count` folders to sync)."""
    client = dovecot.client(address)
    try:
        client.append("INBOX", make_message(subject="im Posteingang"))
        for number in range(1, count):
            client.create_folder(f"Kunden.Ordner {number:02d}")
            client.append(f"Kunden.Ordner {number:02d}", make_message(subject=f"in Ordner {number}"))
    finally:
        client.logout()


def migrated_account(user, make_account, proxy, mailbox) -> MailAccount:
    """A V3 account whose mail server is the proxy, verified and handed over like a migration does."""
    address, password = mailbox
    account = make_account(user, address, imap_host="127.0.0.1", imap_port=proxy.port, imap_security="ssl",
                           username=address, secret_encrypted=crypto.encrypt_json({"password": password}))
    migration = services.start_migration(user=user, account=account)
    migration.connection = {"host": "127.0.0.1", "port": proxy.port, "security": "ssl", "username": address}
    migration.cursors = flow.verify(ImapSettings("127.0.0.1", proxy.port, "ssl", address), password)
    migration.secret_encrypted = crypto.encrypt_json({"password": password})
    handoff.hand_over(migration)
    return account


def unchanged_poll(account, proxy) -> tuple[int, int, int]:
    """(round trips, commands, queries) of one sync of an account whose mailbox did not change."""
    proxy.reset_counts()
    with CaptureQueriesContext(connection) as queries:
        assert sync_account(account.pk) == 0
    return proxy.round_trips, proxy.commands, len(queries.captured_queries)


def test_an_unchanged_poll_costs_the_same_at_1_and_50_folders(dovecot, mail_settings, user, make_account, proxy):
    costs = {}
    for count in (1, 50):
        mailbox = dovecot.take_mailbox()
        make_folders(dovecot, mailbox[0], count)
        account = migrated_account(user, make_account, proxy, mailbox)
        assert sync_account(account.pk) == count  # the first run reads every folder whole
        assert FolderState.objects.filter(account=account, v3_synced_at__isnull=False).count() == count
        costs[count] = unchanged_poll(account, proxy)
        assert not proxy.verbs.keys() & {b"SELECT", b"EXAMINE", b"SEARCH", b"FETCH"}
    (trips_1, commands_1, queries_1), (trips_50, commands_50, queries_50) = costs[1], costs[50]
    assert (trips_1, queries_1) == (trips_50, queries_50)
    # Lease taken, account, folder states (in a savepoint here: 2 more statements), the run's result, its
    # next due time (the listeners' heartbeats, the stored interval with whether push covers it, one
    # UPDATE), lease given back.
    assert queries_1 == 10
    if proxy.rewrite is keep:
        # LOGIN, LIST ... RETURN (STATUS ...), LOGOUT: three commands whatever the folder count.
        assert trips_50 == commands_50 == commands_1 == 3
    else:
        # LOGIN, LIST, one burst of 50 STATUS commands, LOGOUT.
        assert trips_50 == 4 and commands_50 == commands_1 + 49

def test_the_poll_after_new_mail_in_one_of_50_folders_selects_only_that_folder(dovecot, mail_settings, user,
                                                                                make_account, proxy):
    mailbox = dovecot.take_mailbox()
    make_folders(dovecot, mailbox[0], 50)
    account = migrated_account(user, make_account, proxy, mailbox)
    sync_account(account.pk)
    dovecot.deliver(mailbox[0], make_message(subject="neu"), folder="Kunden.Ordner 33")
    proxy.reset_counts()
    assert sync_account(account.pk) == 1
    assert proxy.verbs[b"EXAMINE"] + proxy.verbs[b"SELECT"] == 1
    assert SyncedMessage.objects.filter(account=account, folder="Kunden.Ordner 33").count() == 2


def test_the_first_sync_after_the_handoff_opens_only_folders_that_hold_mail(dovecot, mail_settings, user,
                                                                           make_account, proxy):
    mailbox = dovecot.take_mailbox()
    client = dovecot.client(mailbox[0])
    for number in range(20):
        client.create_folder(f"Leer {number:02d}")
    client.logout()
    dovecot.deliver(mailbox[0], make_message(subject="schon da"), folder="Archiv")
    account = migrated_account(user, make_account, proxy, mailbox)
    proxy.reset_counts()
    assert sync_account(account.pk) == 1  # Archiv is read whole: V2 never imported it
    assert proxy.verbs[b"EXAMINE"] + proxy.verbs[b"SELECT"] == 1
    # The empty folders have their cursors: a message that arrives later is found by UIDNEXT.
    states = FolderState.objects.filter(account=account)
    assert states.count() == 22 and not states.filter(v3_synced_at__isnull=True).exists()
    dovecot.deliver(mailbox[0], make_message(subject="später"), folder="Leer 07")
    assert sync_account(account.pk) == 1
    assert SyncedMessage.objects.get(account=account, folder="Leer 07").subject == "später"


def test_it_reports_a_folder_the_server_will_not_open_among_pipelined_statuses(dovecot, mail_settings, user,
                                                                              make_account):
    from sync.imap import status

    address, password = dovecot.take_mailbox()
    make_folders(dovecot, address, 3)
    proxy = RewritingImapProxy(dovecot, without_capability(b"LIST-STATUS"))
    try:
        client = imap_client.open_mailbox(ImapSettings("127.0.0.1", proxy.port, "ssl", address), password)
        try:
            answers = status.status_pipelined(client, ["INBOX", "Gibt es nicht", "Kunden.Ordner 02"],
                                              status.status_items(client))
        finally:
            imap_client.close(client)
    finally:
        proxy.close()
    assert isinstance(answers["Gibt es nicht"], imap_client.IMAPClientError)
    assert status.cursor_of(answers["INBOX"])["messages"] == 1
    assert status.cursor_of(answers["Kunden.Ordner 02"])["uidnext"] == 2


def test_connections_share_one_tls_context_until_the_ca_setting_changes(dovecot, mail_settings, mailbox,
                                                                         monkeypatch, tmp_path):
    built = []
    real = ssl.create_default_context

    def counting(*args, **kwargs):
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    monkeypatch.setattr(imap_client, "_contexts", {})
    server = ImapSettings("127.0.0.1", dovecot.tls_port, "ssl", mailbox[0])
    for _ in range(3):
        imap_client.close(imap_client.open_mailbox(server, mailbox[1]))
    assert len(built) == 1
    copy = tmp_path / "ca.pem"
    shutil.copy(dovecot.cert_path, copy)
    mail_settings.MAIL_TLS_CA_FILE = str(copy)
    for _ in range(2):
        imap_client.close(imap_client.open_mailbox(server, mailbox[1]))
    assert len(built) == 2
