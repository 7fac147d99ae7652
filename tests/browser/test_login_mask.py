"""The login mask's back paths in Chromium: an IONOS address (IMAP or Microsoft?) back to
"Weiter mit Microsoft", and an unknown domain back through "Alle Anbieter anzeigen" to
"Microsoft Exchange", migrated for real against the fake EWS by the real worker."""

import re

import pytest
from playwright.sync_api import expect

from migration.models import Migration
from tests.browser.conftest import TIMEOUT, sign_in
from tests.conftest import wait_for
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(page, live_server, account):
    sign_in(page, live_server, account.owner.email)
    page.goto(f"{live_server.url}/einstellungen/email-synchronisierung/")
    page.locator(f"#account-{account.pk}").get_by_role("button", name="Zu V3 migrieren").click()
    expect(page).to_have_url(re.compile(r"/migration/\d+/$"))


def test_ionos_offers_imap_or_microsoft_and_leads_back_to_microsoft(
    page, live_server, user, make_account, celery_worker_thread, artifacts, settings
):
    # A portal with its Microsoft app registered (without one, "Weiter mit Microsoft" is disabled and says so).
    settings.MS_CLIENT_ID, settings.MS_CLIENT_SECRET = "client-id", "client-secret"
    account = make_account(user, "info@ionos.de")
    _migrate(page, live_server, account)

    choice = page.get_by_test_id("candidates")
    expect(choice).to_be_visible(timeout=TIMEOUT)  # the page reloads itself after detection
    expect(choice).to_contain_text("Ihre Adresse liegt bei IONOS")
    expect(page.get_by_label("Passwort")).to_have_count(0)  # no guess: the user decides
    page.screenshot(path=str(artifacts / "mask-1-ionos-choice.png"), full_page=True)

    choice.get_by_role("button", name="Weiter mit IMAP (IONOS)").click()
    expect(page.get_by_label("IMAP-Server")).to_have_value("imap.ionos.de")
    expect(page.locator(".hints")).to_contain_text("Microsoft Exchange bei IONOS")

    page.get_by_test_id("back").click()  # "Zurück"
    expect(page.get_by_role("heading", level=1)).to_have_text("Anmelden")
    page.screenshot(path=str(artifacts / "mask-2-picker.png"), full_page=True)
    page.get_by_role("button", name="Weiter mit Microsoft").click()

    expect(page.get_by_role("button", name="Bei Microsoft anmelden")).to_be_visible()
    expect(page.get_by_label("Passwort")).to_have_count(0)
    migration = Migration.objects.get(account=account)
    assert (migration.status, migration.provider_kind) == ("awaiting_user", "microsoft")
    assert list(migration.events.values_list("reason", flat=True))[-2:] == [
        "provider chosen: ionos", "provider chosen: microsoft365"]


def test_the_exchange_path_through_all_providers_migrates_the_account(
    page, live_server, user, make_account, fake_ews, celery_worker_thread, artifacts
):
    account = make_account(user, "anna@firma.test")  # an unknown domain: the generic IMAP step first
    fake_ews.deliver("inbox", subject="Angebot für Firma")
    _migrate(page, live_server, account)
    expect(page.get_by_label("IMAP-Server")).to_have_value("", timeout=TIMEOUT)

    page.get_by_test_id("back").click()
    page.get_by_role("link", name="Alle Anbieter anzeigen").click()
    providers = page.locator(".providers")
    for name in ["Microsoft 365 / Outlook.com", "Microsoft Exchange", "IONOS", "GMX", "WEB.DE", "T-Online",
                 "Strato", "Anderer IMAP-Anbieter"]:
        expect(providers.get_by_role("button", name=name, exact=True)).to_be_visible()
    providers.get_by_role("button", name="Microsoft Exchange", exact=True).click()

    form = page.get_by_test_id("exchange-form")
    expect(form).to_be_visible()
    expect(page.get_by_label("E-Mail-Adresse")).to_have_value("anna@firma.test")
    page.get_by_label("Exchange-Server oder EWS-Adresse").fill(f"localhost:{fake_ews.port}")
    page.get_by_label("Benutzername").fill(EWS_USER)
    page.get_by_label("Passwort").fill(EWS_PASSWORD)
    page.locator("details.advanced summary").click()
    page.get_by_label("Eigenes CA-Zertifikat (PEM, optional)").fill(fake_ews.cert_pem)
    page.screenshot(path=str(artifacts / "mask-3-exchange-form.png"), full_page=True)
    page.get_by_role("button", name="Verbinden und migrieren").click()

    expect(page.get_by_test_id("done")).to_be_visible(timeout=TIMEOUT)
    page.screenshot(path=str(artifacts / "mask-4-exchange-done.png"), full_page=True)
    account.refresh_from_db()
    assert (account.engine, account.provider_kind, account.ews_url) == ("v3", "exchange", fake_ews.url)
    # The first EWS sync right after the handoff reads the overlap window: the mail arrives once.
    wait_for(lambda: account.messages.filter(subject="Angebot für Firma").count() == 1)
