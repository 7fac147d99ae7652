"""Consent belongs to a Microsoft directory, which may own several mail domains."""

import pytest
from django.test import Client

from migration.microsoft import client as ms_client
from migration.models import Migration, TenantConsent
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    FABRIKAM, browser_get, fake_microsoft_server, local, microsoft, ms_account, query_of, sign_in,
)
from tests.test_microsoft_consent import _admin_goes_to_microsoft, _admin_link, _needing_consent

pytestmark = pytest.mark.django_db


def test_the_directory_id_comes_from_microsofts_public_configuration(microsoft):
    microsoft.fabrikam.domains.add("fabrikam.at")
    assert ms_client.directory_id("fabrikam.de") == ms_client.directory_id("fabrikam.at") == FABRIKAM
    assert ms_client.directory_id("unbekannt.example") == ""


def test_one_consent_resumes_the_waiting_migrations_of_every_domain_of_the_directory(
    client, user, other_user, make_account, microsoft
):
    microsoft.fabrikam.domains.add("fabrikam.at")
    microsoft.add_user("otto@fabrikam.at", microsoft.fabrikam)
    lena = _needing_consent(client, user, make_account, microsoft)
    otto = _needing_consent(Client(), other_user, make_account, microsoft, "otto@fabrikam.at")
    assert otto.detected["tenant"] == "fabrikam.at"

    admin, answer = _admin_goes_to_microsoft(microsoft, _admin_link(client, lena))
    # A forged "tenant" parameter in the callback is not what gets recorded.
    forged = local(answer).replace(f"tenant={FABRIKAM}", "tenant=11111111-2222-4333-8444-555555555555")
    assert forged != local(answer)
    assert "Ihre Antwort ist eingegangen" in admin.get(forged).content.decode()

    for migration in (lena, otto):
        migration.refresh_from_db()
        assert migration.status == "awaiting_user" and migration.detected["consent_reported"] is True
    for domain in ("fabrikam.de", "fabrikam.at"):
        consent = TenantConsent.objects.get(tenant=domain)
        assert (consent.status, consent.tenant_id) == ("reported", FABRIKAM)
    assert Migration.objects.filter(status="awaiting_admin_consent").count() == 0
