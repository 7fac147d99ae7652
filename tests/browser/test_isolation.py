"""User A never sees nor touches user B's account or migration."""

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from migration.models import Migration, MigrationEvent, Status
from migration.selectors import current_campaign
from tests.browser.conftest import sign_in

pytestmark = pytest.mark.django_db  # live_server makes its tests transactional itself

A_ADDRESS = "anna@firma-a.example"
B_ADDRESS = "bernd-geheim@firma-b.example"


@pytest.fixture
def a_account(make_account, user):
    return make_account(user, A_ADDRESS, imap_host="imap.firma-a.example", username=A_ADDRESS)


@pytest.fixture
def b_account(make_account, other_user):
    return make_account(other_user, B_ADDRESS, imap_host="imap.firma-b.example", username=B_ADDRESS)


@pytest.fixture
def b_migration(b_account, other_user):
    """B's migration waiting for B's password (no worker needed: nothing is queued)."""
    migration = Migration.objects.create(
        account=b_account, user=other_user, campaign=current_campaign(), provider_kind=b_account.provider_kind,
        status=Status.AWAITING_USER, detected={"host": "imap.firma-b.example", "port": 993, "security": "ssl"},
    )
    MigrationEvent.objects.create(migration=migration, to_status=Status.AWAITING_USER, reason="test")
    return migration


def _unchanged(migration):
    fresh = Migration.objects.get(pk=migration.pk)
    assert (fresh.status, fresh.connection, fresh.secret_encrypted) == (Status.AWAITING_USER, {}, "")
    assert MigrationEvent.objects.filter(migration=migration).count() == 1


def test_a_gets_a_404_page_for_bs_migration_in_the_browser(page, live_server, user, a_account, b_migration, artifacts):
    sign_in(page, live_server, user.email)
    expect(page.get_by_test_id("v2-banner")).to_contain_text(A_ADDRESS)

    response = page.goto(live_server.url + reverse("migration-detail", args=[b_migration.pk]))
    assert response.status == 404
    body = page.locator("body")
    expect(body).not_to_contain_text(B_ADDRESS)
    expect(body).not_to_contain_text("imap.firma-b.example")
    expect(page.get_by_label("Passwort")).to_have_count(0)
    page.screenshot(path=str(artifacts / "isolation-404.png"), full_page=True)

    response = page.goto(live_server.url + reverse("migration-status", args=[b_migration.pk]))
    assert response.status == 404

    page.goto(live_server.url + reverse("settings-mail"))
    expect(page.locator(f"#account-{a_account.pk}")).to_contain_text(A_ADDRESS)
    expect(page.get_by_test_id("account-row")).to_have_count(1)
    expect(page.locator("body")).not_to_contain_text(B_ADDRESS)
    _unchanged(b_migration)


def test_a_cannot_start_a_migration_of_bs_account(client, user, a_account, b_account):
    client.force_login(user)
    response = client.post(reverse("migration-start", args=[b_account.pk]))
    assert response.status_code == 404
    assert not Migration.objects.filter(account=b_account).exists()


@pytest.mark.parametrize("name, method", [
    ("migration-detail", "get"),
    ("migration-status", "get"),
    ("migration-credentials", "post"),
    ("migration-retry", "post"),
    ("migration-cancel", "post"),
])
def test_a_gets_404_for_every_view_of_bs_migration(client, user, b_migration, name, method):
    client.force_login(user)
    data = {"address": B_ADDRESS, "password": "von-a", "host": "evil.example", "port": 993, "security": "ssl",
            "username": B_ADDRESS} if method == "post" else None
    response = getattr(client, method)(reverse(name, args=[b_migration.pk]), data)
    assert response.status_code == 404
    assert B_ADDRESS not in response.content.decode()
    _unchanged(b_migration)


def test_bs_address_is_not_on_as_pages(client, user, a_account, b_account, b_migration):
    client.force_login(user)
    for name in ("dashboard", "settings-mail", "message-list"):
        page = client.get(reverse(name)).content.decode()
        assert B_ADDRESS not in page, name
        assert f"/migration/{b_migration.pk}/" not in page, name
    page = client.get(reverse("settings-mail")).content.decode()
    assert 'data-testid="v2-banner"' in page and A_ADDRESS in page
    assert reverse("migration-start", args=[b_account.pk]) not in page
