"""The Exchange on-premises migration end to end: the form, the real Celery worker on the
real Redis, exchangelib against the fake EWS over HTTPS with its own CA, the handoff and
the periodic EWS sync."""

import socket
from datetime import datetime, timedelta, timezone

import pytest
from django.urls import reverse

from migration.models import Migration, MigrationEvent
from sync import crypto
from sync.identity import normalize_message_id
from sync.models import FolderState, MailAccount, SyncedMessage
from sync.runs import sync_account
from tests.conftest import wait_for
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews, fake_ews_ntlm, hosts  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)
NOW = datetime.now(timezone.utc)
V2_PASSWORD = "alt-v2-passwort"


@pytest.fixture
def exchange_account(make_account, user):
    """A V2 account of `user` on Exchange, whose inbox V2 has imported up to an hour ago."""
    account = make_account(user, "anna@firma.test", provider_kind="exchange", username="anna",
                           secret_encrypted=crypto.encrypt_json({"password": V2_PASSWORD}))
    FolderState.objects.create(account=account, name="INBOX", v2_high_water=NOW - timedelta(hours=1))
    return account


def _v2_imported(account, item):
    SyncedMessage.objects.create(account=account, dedup_key=normalize_message_id(item["message_id"]),
                                 message_id=item["message_id"], folder="INBOX", subject=item["subject"],
                                 received_at=item["received"], imported_by="v2")


def _start(client, account):
    assert client.post(reverse("migration-start", args=[account.pk])).status_code == 302
    migration = Migration.objects.get(account=account)
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status == "awaiting_user")
    return Migration.objects.get(pk=migration.pk)


def _submit(client, migration, fake_ews, **overrides):
    data = {"address": migration.account.address, "server": f"localhost:{fake_ews.port}", "username": EWS_USER,
            "password": EWS_PASSWORD, "auth_type": "auto", "ca_pem": fake_ews.cert_pem, **overrides}
    return client.post(reverse("migration-credentials", args=[migration.pk]), data)


def _finished(migration):
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status in ("done", "failed"))
    return Migration.objects.get(pk=migration.pk)


def test_it_migrates_an_exchange_account_and_keeps_every_message_exactly_once(
    client, user, exchange_account, fake_ews, celery_worker_thread
):
    before = [fake_ews.deliver("inbox", subject=f"vorher {n}", received=NOW - timedelta(hours=3 + n)) for n in range(2)]
    for item in before:
        _v2_imported(exchange_account, item)
    # After V2's last poll, before the switch: V2 never saw it.
    fake_ews.deliver("inbox", subject="zwischen V2-Abruf und Wechsel", received=NOW - timedelta(minutes=30))

    client.force_login(user)
    migration = _start(client, exchange_account)
    assert migration.provider_kind == "exchange"
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert 'name="server"' in page and 'name="ca_pem"' in page and "DOMÄNE\\benutzer" in page
    fake_ews.deliver("inbox", subject="während")

    assert _submit(client, migration, fake_ews).status_code == 302
    migration = _finished(migration)
    assert migration.status == "done", migration.error_code
    assert migration.connection["auth_type"] == "basic"  # what the server's 401 offered
    assert migration.secret_encrypted == ""

    exchange_account.refresh_from_db()
    assert (exchange_account.engine, exchange_account.provider_kind) == ("v3", "exchange")
    assert exchange_account.ews_url == fake_ews.url and exchange_account.ews_auth_type == "basic"
    assert exchange_account.tls_ca_pem.strip() == fake_ews.cert_pem.strip() and exchange_account.username == EWS_USER
    assert crypto.decrypt_json(exchange_account.secret_encrypted) == {"password": EWS_PASSWORD}
    inbox = FolderState.objects.get(account=exchange_account, name="INBOX")
    assert inbox.ews_sync_state and inbox.ews_folder_id and inbox.v2_high_water == NOW - timedelta(hours=1)

    # The worker's first V3 sync runs right after the handoff.
    wait_for(lambda: SyncedMessage.objects.filter(account=exchange_account, subject="während").exists())
    fake_ews.deliver("inbox", subject="danach")
    wait_for(lambda: FolderState.objects.get(pk=inbox.pk).v3_synced_at is not None)
    # The worker's run goes on with the other folders; ours would find the account leased.
    wait_for(lambda: MailAccount.objects.get(pk=exchange_account.pk).sync_lease_token == "")
    assert sync_account(exchange_account.pk) == 1
    assert sync_account(exchange_account.pk) == 0  # a second run duplicates nothing

    subjects = sorted(SyncedMessage.objects.filter(account=exchange_account).values_list("subject", flat=True))
    assert subjects == sorted(["vorher 0", "vorher 1", "zwischen V2-Abruf und Wechsel", "während", "danach"])
    assert set(SyncedMessage.objects.filter(subject__startswith="vorher").values_list("imported_by", flat=True)) == {"v2"}
    assert SyncedMessage.objects.get(subject="danach").imported_by == "v3"
    statuses = list(MigrationEvent.objects.filter(migration=migration).values_list("to_status", flat=True))
    assert statuses == ["pending", "detecting", "awaiting_user", "verifying", "handing_over", "done"]


@pytest.mark.parametrize("overrides, code", [
    ({"password": "falsch"}, "ews_auth_failed"),
    ({"ca_pem": ""}, "ews_tls_failed"),  # the server's own CA is not trusted without it: never "verify off"
    ({"server": "mail.unbekannt.test"}, "unreachable"),
])
def test_a_failed_connection_leaves_the_account_on_v2_untouched_and_can_be_retried(
    client, user, exchange_account, fake_ews, hosts, celery_worker_thread, overrides, code
):
    def unknown():
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    hosts["mail.unbekannt.test"] = unknown
    client.force_login(user)
    migration = _start(client, exchange_account)
    assert _submit(client, migration, fake_ews, **overrides).status_code == 302
    migration = _finished(migration)
    assert (migration.status, migration.error_code) == ("failed", code)
    assert migration.secret_encrypted == ""

    exchange_account.refresh_from_db()
    assert exchange_account.engine == "v2" and exchange_account.ews_url == ""
    assert crypto.decrypt_json(exchange_account.secret_encrypted) == {"password": V2_PASSWORD}
    assert FolderState.objects.get(account=exchange_account, name="INBOX").ews_sync_state == ""
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "Ihr Konto synchronisiert unverändert weiter über V2." in page
    assert {"ews_auth_failed": "DOMÄNE\\benutzer", "ews_tls_failed": "unter „Erweitert“ als CA-Zertifikat",
            "unreachable": "nicht erreichbar"}[code] in page

    client.post(reverse("migration-retry", args=[migration.pk]))
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"
    assert _submit(client, migration, fake_ews).status_code == 302
    assert _finished(migration).status == "done"


def test_an_ews_error_is_reported_clearly(client, user, exchange_account, fake_ews, celery_worker_thread):
    # An error about the request itself; passing ones (ErrorMailboxStoreUnavailable) wait: test_migration_exchange_waits.
    fake_ews.failures["GetFolder"] = "ErrorSchemaValidation"
    client.force_login(user)
    migration = _start(client, exchange_account)
    _submit(client, migration, fake_ews, auth_type="basic")
    migration = _finished(migration)
    assert (migration.status, migration.error_code) == ("failed", "protocol")
    assert Migration.objects.get(pk=migration.pk).account.engine == "v2"
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "Der Server hat nicht wie ein E-Mail-Server geantwortet" in page


@pytest.mark.parametrize("extended_protection", [False, True])
def test_auto_picks_ntlm_when_the_server_offers_it(client, user, exchange_account, fake_ews_ntlm, celery_worker_thread,
                                                   extended_protection):
    # Extended Protection (Exchange 2019 CU14+ by default): NTLM must carry the TLS channel binding.
    fake_ews_ntlm.extended_protection = extended_protection
    fake_ews_ntlm.deliver("inbox", subject="per NTLM")
    client.force_login(user)
    migration = _start(client, exchange_account)
    _submit(client, migration, fake_ews_ntlm)
    migration = _finished(migration)
    assert migration.status == "done", migration.error_code
    assert migration.connection["auth_type"] == "ntlm" and "ntlm-ok" in fake_ews_ntlm.calls
    exchange_account.refresh_from_db()
    assert exchange_account.ews_auth_type == "ntlm"
    # The worker's first V3 sync signs in the same way.
    wait_for(lambda: SyncedMessage.objects.filter(account=exchange_account, subject="per NTLM").exists())
    assert "401-bindings" not in fake_ews_ntlm.calls


def test_a_redelivered_task_finishes_an_exchange_migration_once(user, exchange_account, fake_ews):
    from migration import services, steps

    fake_ews.deliver("inbox", subject="einmal")
    migration = services.start_migration(user=user, account=exchange_account)
    assert steps.run_migration(migration.pk) == "awaiting_user"
    connection = {"ews_url": fake_ews.url, "username": EWS_USER, "auth_type": "auto", "ca_pem": fake_ews.cert_pem}
    services.submit_credentials(migration=Migration.objects.get(pk=migration.pk), connection=connection,
                                password=EWS_PASSWORD, actor="test")
    assert steps.run_migration(migration.pk) == "done"
    calls = len(fake_ews.calls)
    assert steps.run_migration(migration.pk) == "done"  # the broker delivered it again
    assert MigrationEvent.objects.filter(migration=migration, to_status="done").count() == 1
    assert len(fake_ews.calls) == calls  # no second login, no second walk
    sync_account(exchange_account.pk)
    sync_account(exchange_account.pk)
    assert SyncedMessage.objects.filter(account=exchange_account, subject="einmal").count() == 1


def test_no_password_reaches_the_logs_even_at_debug(client, user, exchange_account, fake_ews, caplog,
                                                    celery_worker_thread):
    import base64
    import logging

    caplog.set_level(logging.DEBUG)
    client.force_login(user)
    migration = _start(client, exchange_account)
    _submit(client, migration, fake_ews)
    assert _finished(migration).status == "done"
    sync_account(exchange_account.pk)
    basic = base64.b64encode(f"{EWS_USER}:{EWS_PASSWORD}".encode()).decode()
    assert caplog.records and EWS_PASSWORD not in caplog.text and basic not in caplog.text
