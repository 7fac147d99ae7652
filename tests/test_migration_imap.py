"""The IMAP migration end to end: real worker, real Redis, real Dovecot."""

import socket
import threading
from datetime import datetime, timedelta, timezone

import pytest
from django.core import mail
from django.urls import reverse

from migration.models import Migration, MigrationEvent
from portal.devservers import make_message
from sync.models import FolderState, MailAccount, SyncedMessage
from sync.runs import sync_account
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _start(client, account):
    response = client.post(reverse("migration-start", args=[account.pk]))
    assert response.status_code == 302
    migration = Migration.objects.get(account=account)
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status == "awaiting_user")
    return Migration.objects.get(pk=migration.pk)


def _submit(client, migration, password, **overrides):
    account = migration.account
    data = {
        "address": account.address, "password": password, "host": "127.0.0.1",
        "port": overrides.pop("port", account.imap_port), "security": "ssl", "username": account.address,
    }
    data.update(overrides)
    return client.post(reverse("migration-credentials", args=[migration.pk]), data)


def _finished(migration):
    return wait_for(lambda: Migration.objects.get(pk=migration.pk).status in ("done", "failed")) and \
        Migration.objects.get(pk=migration.pk)


def test_it_migrates_an_imap_account_and_keeps_every_message_exactly_once(
    client, user, imap_account, dovecot, mailbox, mail_settings, celery_worker_thread
):
    address, password = mailbox
    old = datetime.now(timezone.utc) - timedelta(days=3)
    dovecot.deliver(address, make_message(subject="vorher 1", date=old), make_message(subject="vorher 2", date=old), when=old)
    assert sync_account(imap_account.pk) == 2  # V2 imported these
    # Arrives after V2's last poll but before the switch: V2 never saw it.
    dovecot.deliver(address, make_message(subject="zwischen V2-Abruf und Wechsel"))
    # And one without any Message-ID.
    dovecot.deliver(address, make_message(subject="ohne Message-ID", message_id=None))

    client.force_login(user)
    migration = _start(client, imap_account)
    assert migration.detected["host"] == "127.0.0.1"
    # During the migration (after the form, before the handoff is visible).
    dovecot.deliver(address, make_message(subject="während"))
    response = _submit(client, migration, password)
    assert response.status_code == 302
    migration = _finished(migration)
    assert migration.status == "done", migration.error_code
    imap_account.refresh_from_db()
    assert imap_account.engine == "v3" and imap_account.v2_stopped_at is not None
    assert migration.secret_encrypted == ""  # credentials moved to the account, not kept twice

    dovecot.deliver(address, make_message(subject="danach"))
    wait_for(lambda: SyncedMessage.objects.filter(account=imap_account, subject="während").exists())
    # The worker's run goes on with the other folders; ours would find the account leased.
    wait_for(lambda: MailAccount.objects.get(pk=imap_account.pk).sync_lease_token == "")
    sync_account(imap_account.pk)
    sync_account(imap_account.pk)  # a second run must not duplicate anything

    subjects = sorted(SyncedMessage.objects.filter(account=imap_account).values_list("subject", flat=True))
    assert subjects == sorted(["vorher 1", "vorher 2", "zwischen V2-Abruf und Wechsel", "ohne Message-ID",
                               "während", "danach"])
    assert set(SyncedMessage.objects.filter(subject__startswith="vorher").values_list("imported_by", flat=True)) == {"v2"}
    assert SyncedMessage.objects.get(subject="danach").imported_by == "v3"
    statuses = list(MigrationEvent.objects.filter(migration=migration).values_list("to_status", flat=True))
    assert statuses == ["pending", "detecting", "awaiting_user", "verifying", "handing_over", "done"]

    page = client.get(reverse("settings-mail")).content.decode()
    assert "Zu V3 migrieren" not in page
    assert 'data-testid="v2-banner"' not in page
    # The worker confirmed it to the user, once.
    wait_for(lambda: Migration.objects.get(pk=migration.pk).done_mail_sent_at is not None)
    confirmations = [m for m in mail.outbox if m.subject.startswith("Migration abgeschlossen")]
    assert [m.to for m in confirmations] == [[user.email]] and address in confirmations[0].subject


def _sync_state(account):
    return (
        list(FolderState.objects.filter(account=account).order_by("name").values()),
        sorted(SyncedMessage.objects.filter(account=account).values_list("dedup_key", "imported_by")),
    )


def _assert_failed_and_untouched(client, account, migration, before, code, german):
    migration = _finished(migration)
    assert migration.status == "failed"
    assert migration.error_code == code
    assert migration.secret_encrypted == ""
    account.refresh_from_db()
    assert account.engine == "v2"
    assert _sync_state(account) == before
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert german in page
    return migration


def test_it_reports_a_wrong_password_and_lets_the_user_retry(
    client, user, imap_account, dovecot, mailbox, mail_settings, celery_worker_thread
):
    address, password = mailbox
    dovecot.deliver(address, make_message(subject="alt"))
    sync_account(imap_account.pk)
    before = _sync_state(imap_account)
    client.force_login(user)
    migration = _start(client, imap_account)
    _submit(client, migration, "falsch")
    migration = _assert_failed_and_untouched(client, imap_account, migration, before, "auth_failed",
                                             "Die Anmeldung wurde abgelehnt")
    # Retry: the form again, then the right password works.
    client.post(reverse("migration-retry", args=[migration.pk]))
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"
    _submit(client, Migration.objects.get(pk=migration.pk), password)
    assert _finished(migration).status == "done"


def test_it_reports_an_unreachable_host(client, user, imap_account, mailbox, mail_settings, celery_worker_thread):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connection refused
        before = _sync_state(imap_account)
        client.force_login(user)
        migration = _start(client, imap_account)
        _submit(client, migration, mailbox[1], port=port)
        _assert_failed_and_untouched(client, imap_account, migration, before, "unreachable",
                                     "nicht erreichbar")


def test_it_refuses_loopback_without_the_allow_list(
    client, user, imap_account, mailbox, settings, dovecot, celery_worker_thread
):
    settings.EGRESS_ALLOW_NETWORKS = []
    settings.MAIL_TLS_CA_FILE = str(dovecot.cert_path)
    before = _sync_state(imap_account)
    client.force_login(user)
    migration = _start(client, imap_account)
    _submit(client, migration, mailbox[1])
    _assert_failed_and_untouched(client, imap_account, migration, before, "unreachable", "nicht erreichbar")


def test_it_reports_a_tls_failure(client, user, imap_account, mailbox, settings, celery_worker_thread):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    settings.MAIL_TLS_CA_FILE = ""  # Dovecot's self-signed certificate is not trusted
    before = _sync_state(imap_account)
    client.force_login(user)
    migration = _start(client, imap_account)
    _submit(client, migration, mailbox[1])
    _assert_failed_and_untouched(client, imap_account, migration, before, "tls_failed", "sichere Verbindung")


def test_it_reports_a_timeout(client, user, imap_account, mailbox, mail_settings, celery_worker_thread):
    mail_settings.MAIL_CONNECT_TIMEOUT = 1
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts TCP, never says a word: the IMAP greeting times out
    accepted = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        before = _sync_state(imap_account)
        client.force_login(user)
        migration = _start(client, imap_account)
        _submit(client, migration, mailbox[1], port=silent.getsockname()[1])
        _assert_failed_and_untouched(client, imap_account, migration, before, "unreachable", "Zeitüberschreitung")
    finally:
        stop.set()
        thread.join()
        for sock in accepted:
            sock.close()
        silent.close()
