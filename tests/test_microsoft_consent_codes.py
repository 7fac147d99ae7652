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
