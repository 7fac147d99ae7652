"""What a browser can forge changes no shared record, and only Microsoft's proof counts as consent (issue 10,
items 4 and 5; issue 9: a later successful sign-in clears a tenant's "blocked" mark)."""

from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from migration import services, steps
from migration.models import Migration, TenantConsent
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    FABRIKAM, browser_get, fake_microsoft_server, local, microsoft, ms_account, query_of, sign_in,
)


def _waiting(user, account) -> Migration:
    migration = services.start_migration(user=user, account=account)
    assert steps.run_migration(migration.pk) == "awaiting_user"
    return Migration.objects.get(pk=migration.pk)


def _page(client, migration) -> str:
    return client.get(reverse("migration-detail", args=[migration.pk])).content.decode()


@pytest.mark.django_db
def test_a_forged_consent_error_in_the_users_own_callback_changes_no_shared_record(
    client, user, make_account, microsoft, mailoutbox
):
    # fabrikam.de's consent is proven (a user signed in) and support noted the admin's address.
    microsoft.grant_consent_in_entra(microsoft.fabrikam)
    granted_at = timezone.now()
    TenantConsent.objects.create(tenant="fabrikam.de", status="granted", granted_at=granted_at,
                                 admin_email="it@fabrikam.de")
    migration = _waiting(user, make_account(user, "lena@fabrikam.de", provider_kind="microsoft"))
    client.force_login(user)
    # The user starts the sign-in, but writes Microsoft's answer themselves instead of visiting Microsoft.
    state = query_of(client.post(reverse("microsoft-sign-in", args=[migration.pk]))["Location"])["state"]
    client.get(reverse("microsoft-callback") + "?" + urlencode({
        "error": "access_denied", "state": state,
        "error_description": "AADSTS90094: The grant requires admin permission."}))
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"  # their own migration only
    tenant = TenantConsent.objects.get(tenant="fabrikam.de")
    assert (tenant.status, tenant.granted_at, tenant.admin_email) == ("granted", granted_at, "it@fabrikam.de")
    # Nor can they make the portal mail the admin link to any address they like.
    client.post(reverse("microsoft-send-admin-link", args=[migration.pk]), {"email": "victim@example.org"})
    assert [m.to for m in mailoutbox] == [[user.email]]
    assert TenantConsent.objects.get(tenant="fabrikam.de").admin_email == "it@fabrikam.de"


@pytest.mark.django_db
def test_a_forged_admin_consent_callback_does_not_make_the_portal_say_consent_was_granted(
    client, user, make_account, microsoft, mailoutbox
):
    # The app is registered in fabrikam.de (consented once, permissions removed since): a client-credentials
    # token can be had, but no user may sign in.
    microsoft.grant_consent_in_entra(microsoft.fabrikam)
    microsoft.remove_permissions_in_entra(microsoft.fabrikam)
    migration = _waiting(user, make_account(user, "lena@fabrikam.de", provider_kind="microsoft"))
    client.force_login(user)
    sign_in(client, microsoft, migration)
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"
    page = _page(client, migration)
    link = page.split('data-testid="admin-link"')[0].rsplit('value="', 1)[1].split('"')[0].replace("&amp;", "&")

    # Someone holding the link starts the admin consent, never visits Microsoft, and calls the callback.
    forger = Client()
    state = query_of(forger.post(local(link))["Location"])["state"]
    answer = forger.get(reverse("microsoft-admin-callback"), {"admin_consent": "True", "tenant": FABRIKAM,
                                                              "state": state}).content.decode()
    assert "erteilt" not in answer and "bestätigt" not in answer.replace("bestätigt die Zustimmung", "")
    tenant = TenantConsent.objects.get(tenant="fabrikam.de")
    assert tenant.status != "granted" and tenant.granted_at is None
    told = [m.subject + m.body for m in mailoutbox] + [_page(client, migration)]
    assert not any("Zustimmung erteilt" in text or "hat der E-Mail-Synchronisierung zugestimmt" in text
                   for text in told)
    # The user's sign-in asks Microsoft, which still refuses: nothing was granted.
    sign_in(client, microsoft, Migration.objects.get(pk=migration.pk))
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"
    assert TenantConsent.objects.get(tenant="fabrikam.de").status != "granted"


@pytest.mark.django_db
def test_a_successful_sign_in_clears_a_tenants_blocked_mark(client, user, other_user, ms_account, make_account,
                                                           microsoft):
    # contoso.com lets users consent; anna says by mistake that Microsoft showed "Need admin approval".
    anna = _waiting(user, ms_account)
    chef = _waiting(other_user, make_account(other_user, "chef@contoso.com", provider_kind="microsoft"))
    client.force_login(user)
    client.post(reverse("microsoft-blocked", args=[anna.pk]))
    other = Client()
    other.force_login(other_user)
    assert 'data-testid="admin-path"' in _page(other, chef)  # the next user sees the admin path first

    sign_in(client, microsoft, Migration.objects.get(pk=anna.pk))  # "Erneut bei Microsoft anmelden": it works
    assert steps.run_migration(anna.pk) == "done"
    assert 'data-testid="admin-path"' not in _page(other, chef)
    assert TenantConsent.objects.get(tenant="contoso.com").blocked_at is None
    assert TenantConsent.objects.get(tenant="contoso.com").status == "granted"  # Microsoft proved it
