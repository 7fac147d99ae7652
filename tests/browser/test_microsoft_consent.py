"""The admin-consent fallback as people see it, in Chromium: the user is told to
ask the admin, the admin consents through the link (no CRM login), and the
user's page, left open, finishes the migration by itself."""

import re

import pytest
from playwright.sync_api import expect

from migration.models import Migration
from tests.browser.conftest import TIMEOUT, sign_in
from tests.conftest import wait_for
from tests.fakes.microsoft_fixtures import fake_microsoft_server, microsoft, register_site  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    # The fake Microsoft serves a throw-away self-signed certificate.
    return {**browser_context_args, "ignore_https_errors": True}


def test_the_admin_consents_through_the_link_and_the_migration_finishes(
    page, browser, browser_context_args, live_server, settings, user, make_account, microsoft,
    celery_worker_thread, mailoutbox, artifacts,
):
    settings.SITE_URL = live_server.url
    register_site(microsoft, live_server.url)
    settings.MS_APP_DISPLAY_NAME = "Acme CRM Sync V3"
    settings.MS_LEGACY_APP_DISPLAY_NAME = "Acme CRM Sync V2"
    account = make_account(user, "lena@fabrikam.de", provider_kind="microsoft")  # fabrikam: admin approval needed

    sign_in(page, live_server, user.email)
    page.goto(f"{live_server.url}/einstellungen/email-synchronisierung/")
    page.locator(f"#account-{account.pk}").get_by_role("button", name="Zu V3 migrieren").click()
    sign_in_button = page.get_by_role("button", name="Bei Microsoft anmelden")
    expect(sign_in_button).to_be_visible(timeout=TIMEOUT)  # the page reloads itself after detection
    sign_in_button.click()  # to Microsoft, which answers "Need admin approval" (AADSTS90094)

    consent = page.get_by_test_id("admin-consent")
    expect(consent).to_be_visible(timeout=TIMEOUT)
    expect(consent).to_contain_text("Administratorgenehmigung erforderlich")
    expect(consent.get_by_role("button", name="Mit Administratorkonto anmelden")).to_be_visible()
    expect(consent).to_contain_text("Acme CRM Sync V3")
    expect(page.get_by_test_id("legacy-warning")).to_contain_text("Acme CRM Sync V2")
    page.screenshot(path=str(artifacts / "microsoft-1-ask-admin.png"), full_page=True)
    link = page.get_by_test_id("admin-link").input_value()
    assert re.match(rf"{re.escape(live_server.url)}/migration/microsoft/admin/[^/]+/$", link)
    migration = Migration.objects.get(account=account)
    assert migration.status == "awaiting_admin_consent"

    # The admin: another browser, no CRM login, only the link.
    admin_context = browser.new_context(**browser_context_args)
    try:
        admin = admin_context.new_page()
        admin.goto(link)
        expect(admin.get_by_role("heading", level=1)).to_have_text("Zustimmung für die E-Mail-Synchronisierung")
        expect(admin.locator("main")).to_contain_text("lena@fabrikam.de")
        expect(admin.locator("main")).to_contain_text("Mail.Read")
        admin.get_by_role("button", name="Weiter zu Microsoft").click()
        result = admin.get_by_test_id("consent-result")
        expect(result).to_contain_text("Ihre Antwort ist eingegangen", timeout=TIMEOUT)
        admin.screenshot(path=str(artifacts / "microsoft-2-admin-consented.png"), full_page=True)
    finally:
        admin_context.close()

    # The user's page was left open: it notices, signs in again by itself and finishes.
    done = page.get_by_test_id("done")
    expect(done).to_be_visible(timeout=TIMEOUT)
    expect(done).to_have_text("Migration abgeschlossen")
    page.screenshot(path=str(artifacts / "microsoft-3-done.png"), full_page=True)
    migration.refresh_from_db()
    assert migration.status == "done"
    statuses = list(migration.events.values_list("to_status", flat=True))
    assert statuses == ["pending", "detecting", "awaiting_user", "awaiting_admin_consent", "awaiting_user",
                        "verifying", "handing_over", "done"]
    # The consent mail, then the confirmation of the finished migration (sent by the worker, in either order).
    wait_for(lambda: sorted(m.subject for m in mailoutbox) == [
        "Ihr Administrator hat geantwortet – jetzt anmelden",
        "Migration abgeschlossen: lena@fabrikam.de synchronisiert jetzt über V3"])
    account.refresh_from_db()
    assert account.engine == "v3"


@pytest.mark.parametrize("way_back", ["back-button", "return-link"])
def test_a_user_of_a_blocked_tenant_reaches_the_admin_path_without_a_redirect(
    page, live_server, settings, user, make_account, microsoft, celery_worker_thread, artifacts, way_back,
):
    """Microsoft's "Need admin approval" page never redirects: the user comes back by the browser's
    back button, or by its link "Return to the application without granting consent" (a bare cancel)."""
    settings.SITE_URL = live_server.url
    register_site(microsoft, live_server.url)
    microsoft.fabrikam.consent_error_at = "page"
    account = make_account(user, "lena@fabrikam.de", provider_kind="microsoft")

    sign_in(page, live_server, user.email)
    page.goto(f"{live_server.url}/einstellungen/email-synchronisierung/")
    page.locator(f"#account-{account.pk}").get_by_role("button", name="Zu V3 migrieren").click()
    sign_in_button = page.get_by_role("button", name="Bei Microsoft anmelden", exact=True)
    expect(sign_in_button).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_test_id("microsoft-sign-in")).to_contain_text("Administratorgenehmigung erforderlich")
    sign_in_button.click()
    expect(page.locator("body")).to_contain_text("Need admin approval", timeout=TIMEOUT)
    migration = Migration.objects.get(account=account)

    if way_back == "back-button":
        page.go_back()
        page.get_by_role("button", name="Microsoft hat „Administratorgenehmigung erforderlich“ angezeigt").click()
        path = page.get_by_test_id("admin-consent")
    else:
        page.get_by_text("Return to the application without granting consent").click()
        path = page.get_by_test_id("admin-path")
        expect(path).to_contain_text("Hat Microsoft „Administratorgenehmigung erforderlich“ angezeigt?",
                                     timeout=TIMEOUT)
    expect(path.get_by_role("button", name="Mit Administratorkonto anmelden")).to_be_visible(timeout=TIMEOUT)
    expect(path.get_by_test_id("admin-link")).to_be_visible()
    expect(path).to_contain_text("entra.microsoft.com")
    page.screenshot(path=str(artifacts / f"microsoft-blocked-{way_back}.png"), full_page=True)

    # The user is an admin too: consent, and the migration finishes.
    path.get_by_role("button", name="Mit Administratorkonto anmelden").click()
    done = page.get_by_test_id("done")
    expect(done).to_be_visible(timeout=TIMEOUT)
    migration.refresh_from_db()
    assert migration.status == "done"
