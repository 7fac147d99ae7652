"""An admin that cannot do harm: no deleting history, no redirecting a stored password, words instead of keys."""

import socket
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.urls import reverse
from django.utils import translation

from migration import history
from migration.models import Migration, MigrationEvent, Status, TenantConsent
from migration.selectors import current_campaign
from sync import crypto, runs
from sync.models import AccountStatus, MailAccount
from sync.services import save_account_settings

PASSWORD = "SuperGeheim!42"


@pytest.fixture
def migration_of(user):
    def make(account, status=Status.FAILED, **fields):
        migration = Migration.objects.create(account=account, user=account.owner, campaign=current_campaign(),
                                             provider_kind=account.provider_kind, status=status, **fields)
        MigrationEvent.objects.create(migration=migration, to_status=Status.PENDING, reason="started",
                                      actor=f"user:{account.owner_id}")
        return migration

    return make


# --- nothing of the audit trail can be deleted ----------------------------------------------------------------


@pytest.mark.django_db
def test_it_refuses_to_delete_a_migration(admin_client, user, make_account, migration_of):
    migration = migration_of(make_account(user, "anna@gmx.de"))
    assert admin_client.get(reverse("admin:migration_migration_delete", args=[migration.pk])).status_code == 403
    assert admin_client.post(reverse("admin:migration_migration_delete", args=[migration.pk]),
                             {"post": "yes"}).status_code == 403
    assert Migration.objects.filter(pk=migration.pk).exists() and migration.events.count() == 1


@pytest.mark.django_db
def test_it_offers_no_bulk_delete_of_migrations(admin_client, user, make_account, migration_of):
    migration = migration_of(make_account(user, "anna@gmx.de"))
    changelist = reverse("admin:migration_migration_changelist")
    assert "delete_selected" not in admin_client.get(changelist).content.decode()
    admin_client.post(changelist, {"action": "delete_selected", "_selected_action": [migration.pk], "post": "yes"})
    assert Migration.objects.filter(pk=migration.pk).exists()


@pytest.mark.django_db
def test_it_refuses_to_delete_an_account_together_with_its_migrations(admin_client, user, make_account, migration_of):
    account = make_account(user, "anna@gmx.de")
    migration_of(account)
    url = reverse("admin:sync_mailaccount_delete", args=[account.pk])
    response = admin_client.get(url)
    # Django lists what the deletion would need: the migrations, which nobody may delete.
    assert "Migration" in response.content.decode() and response.context["perms_lacking"]
    admin_client.post(url, {"post": "yes"})
    assert MailAccount.objects.filter(pk=account.pk).exists() and Migration.objects.count() == 1


@pytest.mark.django_db
def test_it_refuses_to_delete_a_tenant_consent(admin_client):
    consent = TenantConsent.objects.create(tenant="contoso.com")
    assert admin_client.get(reverse("admin:migration_tenantconsent_delete", args=[consent.pk])).status_code == 403
    assert TenantConsent.objects.filter(pk=consent.pk).exists()


# --- a changed server never receives the stored password -----------------------------------------------------


def _account_form(account, **changes) -> dict:
    data = {
        "owner": account.owner_id, "address": account.address, "provider_kind": account.provider_kind,
        "provider_name": account.provider_name, "status": account.status, "imap_host": account.imap_host,
        "imap_port": account.imap_port or "", "imap_security": account.imap_security, "username": account.username,
        "ews_url": account.ews_url, "ews_auth_type": account.ews_auth_type, "tls_ca_pem": account.tls_ca_pem,
        "folders-TOTAL_FORMS": "0", "folders-INITIAL_FORMS": "0", "folders-MIN_NUM_FORMS": "0",
        "folders-MAX_NUM_FORMS": "1000",
    }
    data.update(changes)
    return data


@pytest.fixture
def v3_imap(user, make_account):
    return make_account(user, "anna@firma.de", engine="v3", imap_host="imap.firma.de", imap_port=993,
                        imap_security="ssl", username="anna", secret_encrypted=crypto.encrypt_json({"password": PASSWORD}))


@pytest.fixture
def listener():
    """A TCP port on 127.0.0.1 that records whether anybody connected (the 'new host' staff typed in)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _connected(server) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def _ca_certificate() -> str:
    """A real self-signed certificate: the CA field keeps certificates only (sync.certificates)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Firmen-CA")])
    now = datetime.now(timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.django_db
@pytest.mark.parametrize("field, value", [
    ("imap_host", "127.0.0.1"), ("imap_port", "1"), ("imap_security", "starttls"), ("username", "anna@firma.de"),
    ("address", "anna@andere-firma.de"), ("tls_ca_pem", _ca_certificate()),
])
def test_it_deletes_the_password_when_staff_change_the_server(admin_client, admin_user, v3_imap, field, value):
    response = admin_client.post(reverse("admin:sync_mailaccount_change", args=[v3_imap.pk]),
                                 _account_form(v3_imap, **{field: value}), follow=True)
    assert response.status_code == 200
    assert "Der Benutzer muss das Konto neu verbinden" in response.content.decode()
    v3_imap.refresh_from_db()
    assert str(getattr(v3_imap, field)) == value  # the change itself is saved ...
    assert v3_imap.secret_encrypted == "" and v3_imap.token_cache_encrypted == ""  # ... the secret is gone
    assert (v3_imap.status, v3_imap.last_sync_error) == (AccountStatus.RECONNECT, "server_changed")


@pytest.mark.django_db
def test_the_sync_never_logs_in_to_the_new_host(admin_client, v3_imap, listener, settings):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    port = listener.getsockname()[1]
    admin_client.post(reverse("admin:sync_mailaccount_change", args=[v3_imap.pk]),
                      _account_form(v3_imap, imap_host="127.0.0.1", imap_port=str(port)))
    v3_imap.refresh_from_db()
    assert v3_imap.imap_port == port

    assert runs.sync_account(v3_imap.pk) == 0

    assert not _connected(listener)  # not even a TCP connection, let alone a LOGIN
    v3_imap.refresh_from_db()
    assert v3_imap.status == AccountStatus.RECONNECT


@pytest.mark.django_db
def test_it_keeps_the_password_when_nothing_about_the_server_changes(admin_client, v3_imap):
    ciphertext = v3_imap.secret_encrypted
    response = admin_client.post(reverse("admin:sync_mailaccount_change", args=[v3_imap.pk]),
                                 _account_form(v3_imap, provider_name="firma"), follow=True)
    assert "neu verbinden" not in response.content.decode()
    v3_imap.refresh_from_db()
    assert v3_imap.provider_name == "firma"
    assert v3_imap.secret_encrypted == ciphertext and v3_imap.status == AccountStatus.ACTIVE


@pytest.mark.django_db
def test_it_deletes_the_microsoft_tokens_when_the_address_changes(user, make_account):
    account = make_account(user, "anna@contoso.com", engine="v3", provider_kind="microsoft",
                           token_cache_encrypted=crypto.encrypt_json({"cache": "{}", "home_account_id": "x"}))
    account.address = "anna@fabrikam.com"
    assert save_account_settings(account=account, actor="staff:1") == ["address"]
    account.refresh_from_db()
    assert account.token_cache_encrypted == "" and account.status == AccountStatus.RECONNECT


@pytest.mark.django_db
def test_a_v2_account_loses_its_password_too_but_stays_on_v2(user, make_account):
    account = make_account(user, "anna@gmx.de", imap_host="imap.gmx.net", imap_port=993, imap_security="ssl",
                           secret_encrypted=crypto.encrypt_json({"password": PASSWORD}))
    account.imap_host = "imap.evil.example"
    save_account_settings(account=account, actor="staff:1")
    account.refresh_from_db()
    assert account.secret_encrypted == "" and account.engine == "v2"
    assert (account.status, account.last_sync_error) == (AccountStatus.ERROR, "server_changed")


@pytest.mark.django_db
def test_a_stale_instance_cannot_bring_back_a_secret(user, make_account, v3_imap):
    stale = MailAccount.objects.get(pk=v3_imap.pk)
    MailAccount.objects.filter(pk=v3_imap.pk).update(secret_encrypted=crypto.encrypt_json({"password": "neu"}))
    stale.provider_name = "firma"
    save_account_settings(account=stale, actor="staff:1")
    v3_imap.refresh_from_db()
    assert crypto.decrypt_json(v3_imap.secret_encrypted) == {"password": "neu"}


# --- the history in words --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_shows_reasons_and_actors_in_words(admin_client, admin_user, user, make_account, migration_of):
    migration = migration_of(make_account(user, "anna@gmx.de"), Status.CANCELLED)
    for reason, actor in [("provider gmx (imap)", "worker"), ("verify: auth_failed", "worker"),
                          ("cancelled by support", f"staff:{admin_user.pk}")]:
        MigrationEvent.objects.create(migration=migration, to_status=Status.FAILED, reason=reason, actor=actor)

    html = admin_client.get(reverse("admin:migration_migration_change", args=[migration.pk])).content.decode()

    assert "Anbieter erkannt: gmx (imap)" in html and "Prüfung fehlgeschlagen: Die Anmeldung wurde abgelehnt." in html
    assert "Vom Support abgebrochen" in html and f"Support: {admin_user.email}" in html
    assert "Hintergrunddienst" in html and "anna@example.com" in html
    assert f"user:{user.pk}" not in html and "cancelled by support" not in html
    assert "V3-Migrationsportal – Verwaltung" in html


@pytest.mark.parametrize("reason, german, english", [
    ("started", "Gestartet", "Started"),
    ("retry", "Erneut gestartet", "Restarted"),
    ("verified, 3 folders", "Verbindung geprüft, 3 Ordner", "Connection verified, 3 folders"),
    ("provider chosen: exchange", "Anbieter gewählt: exchange", "Provider chosen: exchange"),
    ("admin consent required: AADSTS65001", "Administrator-Zustimmung erforderlich: AADSTS65001",
     "Admin consent required: AADSTS65001"),
    ("admin consent reported", "Administrator-Zustimmung gemeldet", "Admin consent reported"),
    ("signed in at Google", "Bei Google angemeldet", "Signed in at Google"),
    ("verifying: gave up after 8 attempts: timed out", "Aufgegeben im Schritt „Verbindung wird geprüft“ nach 8 "
     "attempts: timed out", "Gave up in step “Checking connection” after 8 attempts: timed out"),
    ("Exchange Online host outlook.office365.com: Microsoft 365 (Graph) instead of EWS",
     "Exchange-Online-Server outlook.office365.com: Microsoft 365 (Graph) statt EWS",
     "Exchange Online server outlook.office365.com: Microsoft 365 (Graph) instead of EWS"),
    ("something new", "something new", "something new"),
])
def test_it_translates_event_reasons(reason, german, english):
    with translation.override("de"):
        assert history.reason_text(reason) == german
    with translation.override("en"):
        assert history.reason_text(reason) == english


@pytest.mark.django_db
def test_it_names_actors_with_one_query(django_assert_num_queries, user, other_user):
    actors = [f"user:{user.pk}", f"staff:{other_user.pk}", "worker", "user:999999"]
    with django_assert_num_queries(1):
        emails = history.actor_emails(actors)
    with translation.override("en"):
        assert [history.actor_text(a, emails) for a in actors] == [
            "anna@example.com", "Support: bernd@example.com", "Background worker", "deleted user 999999"]


def test_every_reason_the_code_writes_reads_as_words():
    """A reason written as a literal anywhere in the services and flows (reason="...") is translated; an
    untranslated one showed up in English on the German history (found by a review)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    written = {match for folder in ("migration", "sync") for path in (root / folder).rglob("*.py")
               for match in re.findall(r'reason="([^"]+)"', path.read_text())}
    assert "started" in written and "admin consent reported" in written
    # Codes of skipped messages (sync.models.SkippedMessage.reason), not migration events: shown elsewhere.
    skipped_codes = {"folder_unreadable", "gone", "store_failed", "unreadable"}
    with translation.override("de"):
        untranslated = sorted(r for r in written - skipped_codes if history.reason_text(r) == r)
    assert untranslated == []
