"""The portal's own pages: the settings list, the E-Mails list, who may see them, sign-up, health."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from migration.models import Migration, Status
from migration.selectors import current_campaign
from sync.models import SyncedMessage

ROW = re.compile(r'<tr id="account-(\d+)" data-testid="account-row">(.*?)</tr>', re.DOTALL)
MIGRATE_BUTTON = '<button type="submit" class="button danger">Zu V3 migrieren</button>'


def account_rows(client) -> dict[int, str]:
    response = client.get(reverse("settings-mail"))
    assert response.status_code == 200
    return {int(pk): row for pk, row in ROW.findall(response.content.decode())}


def migration_of(account, status):
    return Migration.objects.create(
        account=account, user=account.owner, campaign=current_campaign(), provider_kind="imap", status=status
    )


# --- settings: personal email sync --------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_lists_each_account_with_engine_status_and_last_sync(signed_in, user, other_user, make_account):
    synced_at = timezone.now() - timedelta(minutes=30)
    gmx = make_account(user, "anna@gmx.de", last_sync_at=synced_at)
    firma = make_account(user, "anna@firma.de", engine="v3", status="error", last_sync_error="auth_failed")
    make_account(other_user, "bernd@gmx.de")

    rows = account_rows(signed_in)

    assert set(rows) == {gmx.pk, firma.pk}  # only Anna's accounts
    assert "anna@gmx.de" in rows[gmx.pk]
    assert '<span class="badge badge-v2">V2</span>' in rows[gmx.pk]
    assert "Aktiv" in rows[gmx.pk]
    assert f"{timezone.localtime(synced_at):%d.%m.%Y %H:%M}" in rows[gmx.pk]
    assert '<span class="badge badge-v3">V3</span>' in rows[firma.pk]
    assert "Fehler" in rows[firma.pk]
    assert ">–</td>" in rows[firma.pk]  # never synced


@pytest.mark.django_db
def test_it_offers_the_red_migrate_button_only_next_to_v2_accounts(signed_in, user, make_account):
    v2_accounts = [make_account(user, "anna@gmx.de"), make_account(user, "anna@web.de", status="stopped")]
    v3 = make_account(user, "anna@firma.de", engine="v3")

    rows = account_rows(signed_in)

    for account in v2_accounts:
        assert MIGRATE_BUTTON in rows[account.pk]
        assert f'action="{reverse("migration-start", args=[account.pk])}"' in rows[account.pk]
    assert "Zu V3 migrieren" not in rows[v3.pk]
    assert "danger" not in rows[v3.pk]
    assert "<form" not in rows[v3.pk]


@pytest.mark.django_db
@pytest.mark.parametrize("status", [Status.PENDING, Status.AWAITING_USER, Status.VERIFYING, Status.HANDING_OVER])
def test_it_offers_to_continue_a_running_migration(signed_in, user, make_account, status):
    account = make_account(user, "anna@gmx.de")
    migration = migration_of(account, status)

    row = account_rows(signed_in)[account.pk]

    assert f'href="{reverse("migration-detail", args=[migration.pk])}">Migration fortsetzen</a>' in row
    assert "Zu V3 migrieren" not in row


@pytest.mark.django_db
@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED])
def test_it_offers_to_migrate_again_after_a_finished_attempt(signed_in, user, make_account, status):
    account = make_account(user, "anna@gmx.de")
    migration = migration_of(account, status)

    row = account_rows(signed_in)[account.pk]

    assert MIGRATE_BUTTON in row and "Migration fortsetzen" not in row
    failed_link = f'href="{reverse("migration-detail", args=[migration.pk])}"'
    assert (failed_link in row and "Letzter Versuch fehlgeschlagen" in row) is (status == Status.FAILED)


@pytest.mark.django_db
def test_it_says_so_when_no_account_is_set_up(signed_in):
    html = signed_in.get(reverse("settings-mail")).content.decode()
    assert "Für Sie ist kein E-Mail-Konto eingerichtet." in html
    assert "Zu V3 migrieren" not in html


@pytest.mark.django_db
def test_it_sends_the_settings_entry_to_the_email_sync_page(signed_in):
    response = signed_in.get(reverse("settings"))
    assert response.status_code == 302 and response.url == reverse("settings-mail")


# --- E-Mails --------------------------------------------------------------------------------------------------


@pytest.fixture
def inbox(user, other_user, make_account):
    """30 messages of Anna's (in two accounts), one a minute, and 3 of Bernd's."""
    start = timezone.now() - timedelta(days=1)
    gmx, web = make_account(user, "anna@gmx.de"), make_account(user, "anna@web.de", engine="v3")
    bernd = make_account(other_user, "bernd@gmx.de")
    mine = [
        SyncedMessage.objects.create(
            account=(gmx, web)[n % 2], dedup_key=f"<{n}@anna>", folder="INBOX", subject=f"Anna Nachricht {n:02d}",
            sender="kunde@example.com", received_at=start + timedelta(minutes=n), imported_by="v2",
        )
        for n in range(30)
    ]
    for n in range(3):
        SyncedMessage.objects.create(
            account=bernd, dedup_key=f"<{n}@bernd>", folder="INBOX", subject=f"Bernd intern {n}",
            received_at=start + timedelta(hours=2, minutes=n), imported_by="v2",
        )
    return mine


@pytest.mark.django_db
def test_it_lists_only_my_messages_newest_first_25_a_page(signed_in, inbox):
    first = signed_in.get(reverse("message-list"))
    second = signed_in.get(reverse("message-list"), {"page": 2})

    newest_first = sorted(inbox, key=lambda m: m.received_at, reverse=True)
    assert list(first.context["page"].object_list) == newest_first[:25]
    assert list(second.context["page"].object_list) == newest_first[25:]
    html = first.content.decode() + second.content.decode()
    assert "Bernd intern" not in html
    assert html.count("Anna Nachricht") == 30
    first_html = first.content.decode()
    assert first_html.index("Anna Nachricht 29") < first_html.index("Anna Nachricht 28")
    assert "Seite 1 von 2" in first_html and 'href="?page=2">Ältere</a>' in first_html
    assert "Seite 2 von 2" in second.content.decode() and 'href="?page=1">Neuere</a>' in second.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("page, number", [("abc", 1), ("0", 2), ("99", 2), ("-1", 2)])
def test_it_shows_a_real_page_for_a_bad_page_number(signed_in, inbox, page, number):
    response = signed_in.get(reverse("message-list"), {"page": page})
    assert response.status_code == 200
    assert response.context["page"].number == number


@pytest.mark.django_db
def test_it_does_not_paginate_a_short_list(signed_in, user, make_account):
    account = make_account(user, "anna@gmx.de")
    SyncedMessage.objects.create(account=account, dedup_key="<1@x>", folder="INBOX", subject="",
                                 received_at=timezone.now(), imported_by="v3")
    html = signed_in.get(reverse("message-list")).content.decode()
    assert "(kein Betreff)" in html and "Seite 1" not in html


@pytest.mark.django_db
def test_it_says_so_when_no_message_is_synced_yet(signed_in, other_user, make_account):
    bernd = make_account(other_user, "bernd@gmx.de")
    SyncedMessage.objects.create(account=bernd, dedup_key="<1@b>", folder="INBOX", subject="Bernd intern",
                                 received_at=timezone.now(), imported_by="v2")
    html = signed_in.get(reverse("message-list")).content.decode()
    assert "Noch keine E-Mails synchronisiert." in html and "Bernd intern" not in html


@pytest.mark.django_db
def test_it_shows_only_my_latest_messages_on_the_dashboard(signed_in, inbox):
    html = signed_in.get(reverse("dashboard")).content.decode()
    assert [f"Anna Nachricht {n}" for n in range(29, 24, -1)] == re.findall(r"Anna Nachricht \d+", html)
    assert "Bernd intern" not in html


# --- who may see what -------------------------------------------------------------------------------------------


PAGES = [
    ("get", "dashboard", []),
    ("get", "message-list", []),
    ("get", "settings", []),
    ("get", "settings-mail", []),
    ("get", "migration-detail", [1]),
    ("get", "migration-status", [1]),
    ("post", "migration-start", [1]),
    ("post", "migration-credentials", [1]),
    ("post", "migration-retry", [1]),
    ("post", "migration-cancel", [1]),
]


@pytest.mark.django_db
@pytest.mark.parametrize("method, name, args", PAGES)
def test_it_requires_a_login_everywhere(client, method, name, args):
    url = reverse(name, args=args)
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response.url == f"{reverse('account_login')}?next={url}"
    assert response.url.startswith("/accounts/login/")


@pytest.mark.django_db
def test_it_starts_no_migration_for_an_anonymous_post(client, user, make_account):
    account = make_account(user, "anna@gmx.de")
    client.post(reverse("migration-start", args=[account.pk]))
    assert not Migration.objects.exists()


@pytest.mark.django_db
def test_it_signs_in_with_email_and_password(client, user):
    response = client.post(reverse("account_login"), {"login": "anna@example.com", "password": "geheim-123"})
    assert response.status_code == 302 and response.url == reverse("dashboard")
    assert client.get(reverse("dashboard")).status_code == 200


@pytest.mark.django_db
def test_it_has_no_open_sign_up(client):
    response = client.get(reverse("account_signup"))
    html = response.content.decode()
    assert 'name="password1"' not in html and 'name="email"' not in html
    assert response.status_code == 200 and "Registrierung geschlossen" in html

    client.post(reverse("account_signup"), {
        "email": "fremd@example.com", "password1": "Ein-langes-Passwort-9", "password2": "Ein-langes-Passwort-9",
    })
    assert not get_user_model().objects.filter(email="fremd@example.com").exists()
    assert "Registrieren" not in client.get(reverse("account_login")).content.decode()


@pytest.mark.django_db
def test_it_opens_sign_up_only_when_configured(client, settings):
    settings.ACCOUNT_ALLOW_SIGNUP = True
    html = client.get(reverse("account_signup")).content.decode()
    assert 'name="password1"' in html  # the closed page above is the setting, not a broken view


@pytest.mark.django_db
def test_it_answers_the_health_check_without_a_login(client):
    response = client.get(reverse("health"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    # No worker or beat in this test: the portal serves, reported as degraded (tests/test_health.py).
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["database"] == "ok"
