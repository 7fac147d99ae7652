"""The Django admin support staff use: find migrations, read their history, retry or cancel, never see a secret."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from migration import tasks
from migration.models import Campaign, Migration, MigrationEvent, Status
from migration.selectors import current_campaign
from sync import crypto
from sync.models import FolderState, SyncedMessage

PASSWORD = "SuperGeheim!42"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff_client(admin_client):
    """A superuser's client; the admin speaks German by default like the portal."""
    return admin_client


@pytest.fixture
def make_migration(user):
    def make(account, status=Status.FAILED, **fields):
        fields.setdefault("campaign", current_campaign())
        migration = Migration.objects.create(
            account=account, user=account.owner, provider_kind=account.provider_kind, status=status, **fields
        )
        MigrationEvent.objects.create(migration=migration, to_status=Status.PENDING, reason="started",
                                      actor=f"user:{account.owner_id}")
        return migration

    return make


@pytest.fixture
def queued(monkeypatch):
    """Task ids the services enqueue (the worker itself is not under test here)."""
    calls = []
    monkeypatch.setattr(tasks.run_migration, "delay", lambda migration_id: calls.append(migration_id))
    return calls


def changelist(client, model: str, **params):
    response = client.get(reverse(f"admin:{model}_changelist"), params)
    assert response.status_code == 200
    return response


def listed(response) -> set:
    return set(response.context["cl"].result_list)


def run_action(client, action: str, *migrations):
    return client.post(reverse("admin:migration_migration_changelist"), {
        "action": action, "_selected_action": [m.pk for m in migrations],
    }, follow=True)


# --- finding a migration ------------------------------------------------------------------------------------


@pytest.fixture
def three_migrations(user, other_user, make_account, make_migration):
    old_campaign = Campaign.objects.create(
        name="Vorherige", migrate_by=timezone.localdate() - timedelta(days=400),
        v2_shutdown=timezone.localdate() - timedelta(days=300), is_active=False,
    )
    return {
        "gmx": make_migration(make_account(user, "anna@gmx.de"), Status.FAILED, error_code="auth_failed"),
        "web": make_migration(make_account(user, "anna@web.de", provider_kind="microsoft"), Status.AWAITING_USER),
        "bernd": make_migration(make_account(other_user, "bernd@firma.de"), Status.DONE, campaign=old_campaign),
    }


@pytest.mark.django_db
def test_it_lists_migrations_with_status_provider_and_campaign_filters(staff_client, three_migrations):
    response = changelist(staff_client, "migration_migration")
    assert listed(response) == set(three_migrations.values())
    assert {spec.field_path for spec in response.context["cl"].filter_specs} == {
        "status", "provider_kind", "campaign", "error_code"}
    html = response.content.decode()
    assert "anna@gmx.de" in html and "bernd@firma.de" in html
    # The error column shows the text support can read out to the user, not the code.
    assert "Die Anmeldung wurde abgelehnt." in html


@pytest.mark.django_db
@pytest.mark.parametrize("params, expected", [
    ({"status__exact": "failed"}, {"gmx"}),
    ({"status__exact": "awaiting_user"}, {"web"}),
    ({"provider_kind__exact": "microsoft"}, {"web"}),
    ({"provider_kind__exact": "imap"}, {"gmx", "bernd"}),
    ({"q": "anna@web.de"}, {"web"}),  # by address
    ({"q": "gmx.de"}, {"gmx"}),
    ({"q": "bernd@example.com"}, {"bernd"}),  # by the user's login e-mail
    ({"q": "anna@example.com"}, {"gmx", "web"}),
    ({"q": "niemand@example.com"}, set()),
    ({"error_code__exact": "auth_failed"}, {"gmx"}),  # every migration that failed the same way
    ({"q": "auth_failed"}, {"gmx"}),
])
def test_it_filters_and_searches_migrations(staff_client, three_migrations, params, expected):
    response = changelist(staff_client, "migration_migration", **params)
    assert listed(response) == {three_migrations[key] for key in expected}


@pytest.mark.django_db
def test_it_filters_migrations_by_campaign(staff_client, three_migrations):
    active = changelist(staff_client, "migration_migration", campaign__id__exact=current_campaign().pk)
    old = changelist(staff_client, "migration_migration", campaign__id__exact=three_migrations["bernd"].campaign_id)
    assert listed(active) == {three_migrations["gmx"], three_migrations["web"]}
    assert listed(old) == {three_migrations["bernd"]}


@pytest.mark.django_db
def test_it_refuses_the_admin_to_anyone_but_staff(client, user):
    client.force_login(user)
    response = client.get(reverse("admin:migration_migration_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response.url


# --- reading one ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_shows_the_event_history_and_the_error_text(staff_client, user, make_account, make_migration):
    migration = make_migration(make_account(user, "anna@gmx.de"), Status.FAILED, error_code="unreachable")
    MigrationEvent.objects.create(migration=migration, from_status=Status.PENDING, to_status=Status.FAILED,
                                  reason="imap connect refused", actor="worker")

    html = staff_client.get(reverse("admin:migration_migration_change", args=[migration.pk])).content.decode()

    assert "Der E-Mail-Server war nicht erreichbar" in html
    # Reasons without a translation are shown as stored; actors by name and e-mail (tests/test_admin_safety.py).
    assert "imap connect refused" in html and "Hintergrunddienst" in html and user.email in html
    assert html.count("Fehlgeschlagen") >= 2  # the status field and the last event's "to"
    assert 'name="status"' not in html  # read-only: changes go through the actions


@pytest.mark.django_db
def test_it_shows_the_error_text_in_english_to_english_staff(staff_client, user, make_account, make_migration):
    migration = make_migration(make_account(user, "anna@gmx.de"), Status.FAILED, error_code="unreachable")
    staff_client.post(reverse("set_language"), {"language": "en", "next": "/admin/"})
    html = staff_client.get(reverse("admin:migration_migration_change", args=[migration.pk])).content.decode()
    assert "The mail server could not be reached" in html
    assert "Der E-Mail-Server war nicht erreichbar" not in html


@pytest.mark.django_db
def test_it_ignores_a_forged_status_change_on_the_change_page(staff_client, user, make_account, make_migration):
    migration = make_migration(make_account(user, "anna@gmx.de"), Status.FAILED)
    staff_client.post(reverse("admin:migration_migration_change", args=[migration.pk]), {"status": "done"})
    migration.refresh_from_db()
    assert migration.status == Status.FAILED
    assert not MigrationEvent.objects.filter(migration=migration, to_status=Status.DONE).exists()


@pytest.mark.django_db
def test_it_offers_no_way_to_add_a_migration_by_hand(staff_client):
    assert staff_client.get(reverse("admin:migration_migration_add")).status_code == 403


# --- acting on it -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_retries_a_failed_migration_through_the_service(staff_client, admin_user, user, make_account,
                                                           make_migration, queued, django_capture_on_commit_callbacks):
    migration = make_migration(make_account(user, "anna@gmx.de"), Status.FAILED, error_code="auth_failed",
                               detected={"host": "imap.gmx.net"}, finished_at=timezone.now())

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(staff_client, "retry", migration)

    assert "1 ausgeführt, 0 übersprungen" in response.content.decode()
    migration.refresh_from_db()
    # Staff start over from detection, even when the user's retry would go straight to the form.
    assert migration.status == Status.PENDING
    assert migration.error_code == "" and migration.finished_at is None and migration.attempts == 1
    event = migration.events.last()
    assert (event.from_status, event.to_status, event.reason, event.actor) == (
        Status.FAILED, Status.PENDING, "retry", f"staff:{admin_user.pk}")
    assert queued == [migration.pk]  # the worker is queued after the commit


@pytest.mark.django_db
@pytest.mark.parametrize("status", [Status.AWAITING_USER, Status.DONE, Status.CANCELLED])
def test_it_skips_a_retry_of_a_migration_that_did_not_fail(staff_client, user, make_account, make_migration, queued,
                                                           status, django_capture_on_commit_callbacks):
    migration = make_migration(make_account(user, "anna@gmx.de"), status)
    events = migration.events.count()

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(staff_client, "retry", migration)

    assert "0 ausgeführt, 1 übersprungen" in response.content.decode()
    migration.refresh_from_db()
    assert migration.status == status and migration.events.count() == events
    assert queued == []


@pytest.mark.django_db
def test_it_skips_a_retry_when_the_account_is_already_on_v3(staff_client, user, make_account, make_migration, queued):
    migration = make_migration(make_account(user, "anna@gmx.de", engine="v3"), Status.FAILED)
    response = run_action(staff_client, "retry", migration)
    assert "0 ausgeführt, 1 übersprungen" in response.content.decode()
    migration.refresh_from_db()
    assert migration.status == Status.FAILED


@pytest.mark.django_db
@pytest.mark.parametrize("status", [Status.PENDING, Status.AWAITING_USER, Status.VERIFYING, Status.FAILED])
def test_it_cancels_through_the_service(staff_client, admin_user, user, make_account, make_migration, status):
    secret = crypto.encrypt_json({"password": PASSWORD})
    migration = make_migration(make_account(user, "anna@gmx.de"), status, secret_encrypted=secret)

    response = run_action(staff_client, "cancel", migration)

    assert "1 ausgeführt, 0 übersprungen" in response.content.decode()
    migration.refresh_from_db()
    assert migration.status == Status.CANCELLED and migration.finished_at is not None
    assert migration.secret_encrypted == ""  # a finished migration keeps no credentials
    event = migration.events.last()
    assert (event.from_status, event.to_status, event.actor) == (status, Status.CANCELLED, f"staff:{admin_user.pk}")
    assert "support" in event.reason


@pytest.mark.django_db
def test_it_cancels_what_it_can_and_skips_the_rest(staff_client, user, make_account, make_migration):
    running = make_migration(make_account(user, "anna@gmx.de"), Status.AWAITING_USER)
    handing_over = make_migration(make_account(user, "anna@web.de"), Status.HANDING_OVER)
    done = make_migration(make_account(user, "anna@t-online.de"), Status.DONE)

    response = run_action(staff_client, "cancel", running, handing_over, done)

    assert "1 ausgeführt, 2 übersprungen" in response.content.decode()
    statuses = dict(Migration.objects.values_list("pk", "status"))
    assert statuses == {running.pk: Status.CANCELLED, handing_over.pk: Status.HANDING_OVER, done.pk: Status.DONE}


# --- no secret anywhere -----------------------------------------------------------------------------------


@pytest.fixture
def secret_world(user, make_account, make_migration):
    account_secret = crypto.encrypt_json({"password": PASSWORD})
    migration_secret = crypto.encrypt_json({"password": PASSWORD})
    account = make_account(user, "anna@gmx.de", imap_host="imap.gmx.net", imap_port=993, imap_security="ssl",
                           username="anna@gmx.de", secret_encrypted=account_secret)
    FolderState.objects.create(account=account, name="INBOX", uidvalidity=7, uidnext=42)
    migration = make_migration(account, Status.VERIFYING, secret_encrypted=migration_secret,
                               connection={"host": "imap.gmx.net", "port": 993, "security": "ssl",
                                           "username": "anna@gmx.de"})
    message = SyncedMessage.objects.create(account=account, dedup_key="<1@gmx.de>", message_id="<1@gmx.de>",
                                           folder="INBOX", subject="Angebot", sender="kunde@example.com",
                                           imported_by="v2")
    return {"account": account, "migration": migration, "message": message,
            "ciphertexts": [account_secret, migration_secret]}


def _admin_pages(world):
    pages = []
    for model, obj in [("sync_mailaccount", world["account"]), ("migration_migration", world["migration"]),
                       ("sync_syncedmessage", world["message"])]:
        pages += [
            reverse(f"admin:{model}_changelist"),
            reverse(f"admin:{model}_changelist") + "?q=anna",
            reverse(f"admin:{model}_change", args=[obj.pk]),
            reverse(f"admin:{model}_history", args=[obj.pk]),
        ]
        if model != "migration_migration":  # migrations cannot be deleted (tests/test_admin_safety.py)
            pages.append(reverse(f"admin:{model}_delete", args=[obj.pk]))
    return pages


@pytest.mark.django_db
def test_it_never_shows_a_secret_in_the_admin(staff_client, secret_world):
    assert crypto.decrypt_json(secret_world["ciphertexts"][0]) == {"password": PASSWORD}  # there is one to leak
    for url in _admin_pages(secret_world):
        response = staff_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert PASSWORD not in html and "SuperGeheim" not in html, url
        for ciphertext in secret_world["ciphertexts"]:
            assert ciphertext not in html and ciphertext[-40:] not in html, url
        assert "secret_encrypted" not in html, url


@pytest.mark.django_db
def test_it_shows_the_connection_without_the_secret(staff_client, secret_world):
    account_url = reverse("admin:sync_mailaccount_change", args=[secret_world["account"].pk])
    html = staff_client.get(account_url).content.decode()
    assert "imap.gmx.net" in html and "INBOX" in html  # the page is not simply empty
    migration_url = reverse("admin:migration_migration_change", args=[secret_world["migration"].pk])
    html = staff_client.get(migration_url).content.decode()
    assert "imap.gmx.net" in html


@pytest.mark.django_db
def test_it_keeps_the_secret_when_staff_save_an_account(staff_client, secret_world):
    account = secret_world["account"]
    response = staff_client.post(reverse("admin:sync_mailaccount_change", args=[account.pk]), {
        "owner": account.owner_id, "address": account.address, "provider_kind": "imap", "provider_name": "gmx",
        "status": "active", "imap_host": "imap.gmx.net", "imap_port": "993", "imap_security": "ssl",
        "username": account.username, "engine": "v3", "secret_encrypted": "forged",
        "folders-TOTAL_FORMS": "1", "folders-INITIAL_FORMS": "1", "folders-MIN_NUM_FORMS": "0",
        "folders-MAX_NUM_FORMS": "1000", "folders-0-id": account.folders.get().pk, "folders-0-account": account.pk,
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    account.refresh_from_db()
    assert account.provider_name == "gmx"  # the save went through ...
    assert account.secret_encrypted == secret_world["ciphertexts"][0]  # ... but the secret is not a form field
    assert account.engine == "v2"  # and the engine only changes by migrating


# --- accounts ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_lists_accounts_with_engine_status_and_last_sync(staff_client, user, other_user, make_account):
    synced_at = timezone.now() - timedelta(hours=2)
    make_account(user, "anna@gmx.de", last_sync_at=synced_at)
    make_account(other_user, "bernd@firma.de", engine="v3", status="error", last_sync_error="auth_failed")

    response = changelist(staff_client, "sync_mailaccount")

    html = response.content.decode()
    for column in ("engine", "status", "last_sync_at"):
        assert f"column-{column}" in html
    assert '<td class="field-engine">V2</td>' in html and '<td class="field-engine">V3</td>' in html
    assert '<td class="field-status">Aktiv</td>' in html and '<td class="field-status">Fehler</td>' in html
    assert f"{timezone.localtime(synced_at):%Y}" in html.split("field-last_sync_at")[1]


@pytest.mark.django_db
@pytest.mark.parametrize("params, expected", [
    ({"engine__exact": "v2"}, {"anna@gmx.de"}),
    ({"engine__exact": "v3"}, {"bernd@firma.de"}),
    ({"status__exact": "error"}, {"bernd@firma.de"}),
    ({"q": "bernd@example.com"}, {"bernd@firma.de"}),
    ({"q": "gmx"}, {"anna@gmx.de"}),
])
def test_it_filters_and_searches_accounts(staff_client, user, other_user, make_account, params, expected):
    make_account(user, "anna@gmx.de")
    make_account(other_user, "bernd@firma.de", engine="v3", status="error")
    response = changelist(staff_client, "sync_mailaccount", **params)
    assert {account.address for account in listed(response)} == expected


@pytest.mark.django_db
def test_it_offers_account_filters(staff_client):
    response = changelist(staff_client, "sync_mailaccount")
    assert {"engine", "status"} <= {spec.field_path for spec in response.context["cl"].filter_specs}


@pytest.mark.django_db
def test_a_bulk_retry_says_why_it_skipped_each(staff_client, user, make_account, make_migration):
    """Already on V3 is not "another status": support reads each reason (found by a review)."""
    failed_on_v3 = make_migration(make_account(user, "anna@gmx.de", engine="v3"), Status.FAILED, error_code="auth_failed")
    running = make_migration(make_account(user, "bernd@gmx.de"), Status.VERIFYING)
    response = staff_client.post(reverse("admin:migration_migration_changelist"), {
        "action": "retry", "_selected_action": [failed_on_v3.pk, running.pk]}, follow=True)
    text = response.content.decode()
    assert "0 ausgeführt, 2 übersprungen" in text
    assert "1 × das Konto synchronisiert bereits über V3." in text
    assert "1 × die Migration ist in einem anderen Status." in text
