"""In Chromium: "Microsoft Exchange" with an Exchange Online host leads to the Microsoft 365 sign-in, with the reason."""

import re

import pytest
from playwright.sync_api import expect

from migration.models import Migration
from tests.browser.conftest import TIMEOUT, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_exchange_online_host_goes_to_the_microsoft_sign_in(
    page, live_server, user, make_account, celery_worker_thread, artifacts, settings
):
    settings.MS_CLIENT_ID, settings.MS_CLIENT_SECRET = "client-id", "client-secret"
    account = make_account(user, "anna@firma.test")
    sign_in(page, live_server, user.email)
    page.goto(f"{live_server.url}/einstellungen/email-synchronisierung/")
    page.locator(f"#account-{account.pk}").get_by_role("button", name="Zu V3 migrieren").click()
    expect(page).to_have_url(re.compile(r"/migration/\d+/$"))
    expect(page.get_by_label("IMAP-Server")).to_have_value("", timeout=TIMEOUT)

    page.get_by_test_id("back").click()
    page.get_by_role("link", name="Alle Anbieter anzeigen").click()
    page.locator(".providers").get_by_role("button", name="Microsoft Exchange", exact=True).click()
    page.get_by_label("Exchange-Server oder EWS-Adresse").fill("outlook.office365.com")
    page.get_by_label("Benutzername").fill("anna@firma.test")
    page.get_by_label("Passwort").fill("wird-nicht-gebraucht")
    page.get_by_role("button", name="Verbinden und migrieren").click()

    expect(page.get_by_text("outlook.office365.com gehört zu Exchange Online (Microsoft 365)")).to_be_visible()
    expect(page.get_by_test_id("exchange-online")).to_contain_text("April 2027")
    expect(page.get_by_role("button", name="Bei Microsoft anmelden")).to_be_visible()
    expect(page.get_by_label("Passwort")).to_have_count(0)
    page.screenshot(path=str(artifacts / "exchange-online-to-microsoft.png"), full_page=True)
    migration = Migration.objects.get(account=account)
    assert (migration.status, migration.provider_kind, migration.connection) == ("awaiting_user", "microsoft", {})
