"""Re-connecting a V3 Microsoft account whose tenant now demands admin consent."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from migration.models import TenantConsent
from sync.models import MailAccount
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    browser_get, fake_microsoft_server, local, microsoft, ms_account, query_of, sign_in,
)
from tests.test_microsoft_sync import migrated  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


def _reconnect(client, microsoft, account):
    response = client.post(reverse("microsoft-reconnect", args=[account.pk]))
    return client.get(local(browser_get(microsoft, response["Location"])))


@pytest.mark.parametrize("at", ["authorize", "token"])
def test_it_offers_the_ways_to_an_admin_and_reconnects_after_consent(client, migrated, microsoft, settings, at):
    settings.MS_APP_DISPLAY_NAME = "Acme CRM Sync V3"
    MailAccount.objects.filter(pk=migrated.pk).update(status="reconnect", last_sync_error="ms_reconnect")
    microsoft.contoso.needs_admin_consent, microsoft.contoso.consent_error_at = 90094, at  # consent revoked

    page = _reconnect(client, microsoft, migrated)
    html = page.content.decode()
    assert page.status_code == 200 and 'data-testid="reconnect-consent"' in html
    assert "Zustimmung eines Administrators" in html and "Acme CRM Sync V3" in html and "contoso.com" in html
    link = re.search(r'value="([^"]+)" data-testid="admin-link"', html)[1].replace("&amp;", "&")
    assert TenantConsent.objects.filter(tenant="contoso.com").exists()
    assert MailAccount.objects.get(pk=migrated.pk).status == "reconnect"  # nothing changed yet

    admin = Client()  # the admin follows the link, no CRM login
    response = admin.post(local(link))
    answer = browser_get(microsoft, response["Location"])
    assert query_of(answer)["admin_consent"] == "True"
    assert "Ihre Antwort ist eingegangen" in admin.get(local(answer)).content.decode()

    back = _reconnect(client, microsoft, migrated)
    assert back.status_code == 302 and back["Location"] == reverse("settings-mail")
    account = MailAccount.objects.get(pk=migrated.pk)
    assert (account.status, account.last_sync_error) == ("active", "")


def test_it_asks_about_the_blocking_page_when_a_reconnect_comes_back_without_consent(client, migrated, microsoft):
    MailAccount.objects.filter(pk=migrated.pk).update(status="reconnect", last_sync_error="ms_reconnect")
    microsoft.contoso.needs_admin_consent, microsoft.contoso.consent_error_at = 90094, "page"
    microsoft.authorize_error = {"error": "access_denied", "error_subcode": "cancel"}  # the page's return link
    html = _reconnect(client, microsoft, migrated).content.decode()
    assert "Hat Microsoft „Administratorgenehmigung erforderlich“ angezeigt?" in html
    assert 'data-testid="admin-link"' in html and "entra.microsoft.com" in html and "Neu verbinden" in html
    assert not TenantConsent.objects.filter(tenant="contoso.com").exists()  # not known as blocked yet
