"""Microsoft's consent answers as the real service gives them (issue 9): every documented
consent code, the user's own decline, the blocking page that never redirects, its cancel
return, and a personal account at a work-only authority."""

import pytest
import requests
from django.urls import reverse

from migration import services, steps
from migration.models import Migration, TenantConsent
from tests.fakes.microsoft import CONSUMERS, return_link
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    fake_microsoft_server, local, microsoft, ms_account, query_of, sign_in,
)


def _waiting(user, account) -> Migration:
    migration = services.start_migration(user=user, account=account)
    assert steps.run_migration(migration.pk) == "awaiting_user"
    return Migration.objects.get(pk=migration.pk)


def _page(client, migration) -> str:
    return client.get(reverse("migration-detail", args=[migration.pk])).content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("code", [90093, 900941, 900981])
def test_it_waits_for_admin_consent_on_every_documented_consent_code(client, user, make_account, microsoft, code):
    microsoft.fabrikam.needs_admin_consent = code
    migration = _waiting(user, make_account(user, "lena@fabrikam.de", provider_kind="microsoft"))
    client.force_login(user)
    sign_in(client, microsoft, migration)
    migration.refresh_from_db()
    assert migration.status == "awaiting_admin_consent"
    assert "Mit Administratorkonto anmelden" in _page(client, migration)


@pytest.mark.django_db
@pytest.mark.parametrize("answer", [
    pytest.param({"error": "access_denied", "error_subcode": "cancel",
                  "error_description": "AADSTS65004: User declined to consent to access the app."}, id="subcode"),
    pytest.param({"error": "consent_required",
                  "error_description": "AADSTS65004: User declined to consent to access the app."}, id="consent"),
])
def test_it_tells_a_users_decline_apart_from_admin_consent(client, user, ms_account, microsoft, answer):
    migration = _waiting(user, ms_account)
    client.force_login(user)
    microsoft.authorize_error = answer
    response, _, _ = sign_in(client, microsoft, migration)
    migration.refresh_from_db()
    assert migration.status == "awaiting_user"  # not the admin path
    assert not TenantConsent.objects.exists()
    page = client.get(response["Location"]).content.decode()
    assert "Sie haben bei Microsoft die Zustimmung abgelehnt" in page
    assert "Bei Microsoft anmelden" in page  # the retry
    assert "Mit Administratorkonto anmelden" not in page


@pytest.mark.django_db
def test_it_explains_a_personal_account_at_a_work_only_authority(client, user, make_account, microsoft, settings):
    microsoft.add_user("max@outlook.com", microsoft.tenants[CONSUMERS])
    migration = _waiting(user, make_account(user, "max@outlook.com", provider_kind="microsoft"))
    client.force_login(user)
    response, _, back = sign_in(client, microsoft, migration)
    assert "AADSTS500208" in back
    page = client.get(response["Location"]).content.decode()
    assert "privaten Microsoft-Konto" in page and "MS_AUTHORITY" in page and "/common" in page
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"


def _scopes(scope: str) -> set[str]:
    """Graph's scopes by their short name (User.Read and https://graph.microsoft.com/User.Read are one)."""
    return {s.removeprefix("https://graph.microsoft.com/") for s in scope.split()}


@pytest.mark.django_db
def test_it_asks_the_admin_for_the_scopes_the_sign_in_asks_for(client, user, make_account, microsoft):
    migration = _waiting(user, make_account(user, "lena@fabrikam.de", provider_kind="microsoft"))
    client.force_login(user)
    _, authorize, _ = sign_in(client, microsoft, migration)
    response = client.post(reverse("microsoft-admin-consent", args=[migration.pk]))
    assert response.status_code == 302 and "/adminconsent?" in response["Location"]
    assert _scopes(query_of(response["Location"])["scope"]) == _scopes(query_of(authorize)["scope"])


def _blocked_sign_in(client, microsoft, migration) -> str:
    """Press "Bei Microsoft anmelden"; Microsoft shows its blocking page (no redirect). Returns the page."""
    response = client.post(reverse("microsoft-sign-in", args=[migration.pk]))
    assert response.status_code == 302
    page = requests.get(response["Location"], verify=str(microsoft.cert_path), allow_redirects=False, timeout=10)
    assert page.status_code == 200 and "Need admin approval" in page.text
    return page.text


def _shows_the_admin_path(page: str) -> None:
    assert 'data-testid="admin-link"' in page and "/migration/microsoft/admin/" in page
    assert "Link an mich senden" in page and "Mit Administratorkonto anmelden" in page
    assert "entra.microsoft.com" in page and "Erneut bei Microsoft anmelden" in page


@pytest.mark.django_db
def test_it_offers_the_admin_path_when_the_user_returns_from_the_blocking_page(client, user, make_account, microsoft):
    microsoft.fabrikam.consent_error_at = "page"
    migration = _waiting(user, make_account(user, "lena@fabrikam.de", provider_kind="microsoft"))
    client.force_login(user)
    back = return_link(_blocked_sign_in(client, microsoft, migration))
    assert "error_subcode=cancel" in back and "AADSTS" not in back
    response = client.get(local(back))
    page = client.get(response["Location"]).content.decode()
    assert "Hat Microsoft „Administratorgenehmigung erforderlich“ angezeigt?" in page
    assert "abgebrochen. Sie können" not in page  # not "cancelled"
    _shows_the_admin_path(page)
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"

    client.post(reverse("microsoft-blocked", args=[migration.pk]))  # "Ja, das hat Microsoft angezeigt"
    migration.refresh_from_db()
    assert migration.status == "awaiting_admin_consent"
    assert TenantConsent.objects.get(tenant="fabrikam.de").status == "requested"


@pytest.mark.django_db
def test_it_sends_the_admin_link_from_the_question(client, user, make_account, microsoft, mailoutbox):
    microsoft.fabrikam.consent_error_at = "page"
    migration = _waiting(user, make_account(user, "lena@fabrikam.de", provider_kind="microsoft"))
    client.force_login(user)
    client.get(local(return_link(_blocked_sign_in(client, microsoft, migration))))
    client.post(reverse("microsoft-send-admin-link", args=[migration.pk]))
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"
    assert [m.to for m in mailoutbox] == [[user.email]]


@pytest.mark.django_db
def test_it_reaches_the_admin_path_when_microsoft_never_redirects(client, user, make_account, microsoft):
    microsoft.fabrikam.consent_error_at = "page"
    migration = _waiting(user, make_account(user, "lena@fabrikam.de", provider_kind="microsoft"))
    client.force_login(user)
    before = _page(client, migration)
    assert "Administratorgenehmigung erforderlich" in before and 'data-testid="report-block"' in before
    _blocked_sign_in(client, microsoft, migration)
    # Nothing comes back; the user returns with the browser's back button and says what Microsoft showed.
    client.post(reverse("microsoft-blocked", args=[migration.pk]))
    migration.refresh_from_db()
    assert migration.status == "awaiting_admin_consent"
    _shows_the_admin_path(_page(client, migration))


@pytest.mark.django_db
def test_it_shows_the_admin_path_first_to_the_next_user_of_a_blocked_tenant(
    client, user, other_user, make_account, microsoft
):
    microsoft.fabrikam.consent_error_at = "page"
    lena = _waiting(user, make_account(user, "lena@fabrikam.de", provider_kind="microsoft"))
    otto = _waiting(other_user, make_account(other_user, "otto@fabrikam.de", provider_kind="microsoft"))
    anna = _waiting(user, make_account(user, "anna@contoso.com", provider_kind="microsoft"))
    client.force_login(other_user)
    assert 'data-testid="admin-path"' not in _page(client, otto)
    client.force_login(user)
    client.post(reverse("microsoft-blocked", args=[lena.pk]))
    assert 'data-testid="admin-path"' not in _page(client, anna)  # another tenant
    client.force_login(other_user)
    page = _page(client, otto)
    assert 'data-testid="admin-path"' in page
    _shows_the_admin_path(page)
