"""The whole IMAP migration as a user sees it: Chromium, live_server, the real
Celery worker and the real Dovecot. Nobody reloads by hand: the page polls."""

import re

import pytest
from playwright.sync_api import expect

from migration.models import Migration
from tests.browser.conftest import TIMEOUT, sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def _open_migration(page, live_server, account):
    """Sign in, follow the banner to the settings page, click "Zu V3 migrieren"."""
    sign_in(page, live_server, account.owner.email)
    banner = page.get_by_test_id("v2-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Bitte migrieren Sie Ihre E-Mail-Synchronisierung")
    banner.get_by_role("link", name=account.address).click()

    expect(page).to_have_url(re.compile(rf"/einstellungen/email-synchronisierung/#account-{account.pk}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Persönliche E-Mail-Synchronisierung")
    row = page.locator(f"#account-{account.pk}")
    expect(row).to_contain_text(account.address)
    expect(row.locator(".badge")).to_have_text("V2")
    migrate = row.get_by_role("button", name="Zu V3 migrieren")
    expect(migrate).to_have_css("background-color", "rgb(198, 40, 40)")  # var(--red)
    migrate.click()

    expect(page).to_have_url(re.compile(r"/migration/\d+/$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{account.address} zu V3 migrieren")
    return Migration.objects.get(account=account)


def _expect_form(page, account, dovecot):
    """The IMAP form appears by itself (the JS reloads once detection is done), pre-filled."""
    password = page.get_by_label("Passwort")
    expect(password).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_label("E-Mail-Adresse")).to_have_value(account.address)
    expect(page.get_by_label("IMAP-Server")).to_have_value("127.0.0.1")
    expect(page.get_by_label("Port")).to_have_value(str(dovecot.tls_port))
    expect(page.get_by_label("Verschlüsselung")).to_have_value("ssl")
    expect(page.get_by_label("Benutzername")).to_have_value(account.address)
    expect(password).to_have_value("")  # never rendered back
    return password


def _status_polls(page):
    polls = []
    page.on("request", lambda request: polls.append(request.url) if request.url.endswith("/status/") else None)
    return polls


def test_it_walks_the_whole_imap_migration(
    page, live_server, imap_account, dovecot, mailbox, mail_settings, celery_worker_thread, artifacts
):
    address, password = mailbox
    polls = _status_polls(page)
    migration = _open_migration(page, live_server, imap_account)

    field = _expect_form(page, imap_account, dovecot)
    page.locator("details.advanced summary").click()  # show the server settings on the screenshot
    expect(page.get_by_label("IMAP-Server")).to_be_visible()
    field.fill(password)
    page.screenshot(path=str(artifacts / "journey-1-form.png"), full_page=True)
    page.get_by_role("button", name="Verbinden und migrieren").click()

    done = page.get_by_test_id("done")
    expect(done).to_be_visible(timeout=TIMEOUT)
    expect(done).to_have_text("Migration abgeschlossen")
    expect(page.locator(".timeline li")).to_have_count(6)  # pending … done
    assert any(url.endswith(f"/migration/{migration.pk}/status/") for url in polls), "the page never polled"
    page.screenshot(path=str(artifacts / "journey-2-done.png"), full_page=True)

    page.get_by_role("link", name="Zurück zu den Einstellungen").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Persönliche E-Mail-Synchronisierung")
    expect(page.get_by_test_id("v2-banner")).to_have_count(0)
    row = page.locator(f"#account-{imap_account.pk}")
    expect(row).to_contain_text(address)
    expect(row.locator(".badge")).to_have_text("V3")
    expect(page.get_by_role("button", name="Zu V3 migrieren")).to_have_count(0)
    page.screenshot(path=str(artifacts / "journey-3-settings.png"), full_page=True)

    imap_account.refresh_from_db()
    assert imap_account.engine == "v3"


def test_it_shows_a_wrong_password_in_german(
    page, live_server, imap_account, dovecot, mailbox, mail_settings, celery_worker_thread, artifacts
):
    address, password = mailbox
    _open_migration(page, live_server, imap_account)
    _expect_form(page, imap_account, dovecot).fill("falsch")
    page.get_by_role("button", name="Verbinden und migrieren").click()

    error = page.get_by_test_id("error")
    expect(error).to_be_visible(timeout=TIMEOUT)
    expect(error).to_contain_text("Die Anmeldung wurde abgelehnt")
    expect(page.get_by_text("Ihr Konto synchronisiert unverändert weiter über V2.")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("falsch")  # the password is never echoed
    page.screenshot(path=str(artifacts / "wrong-password.png"), full_page=True)

    page.get_by_role("button", name="Erneut versuchen").click()
    _expect_form(page, imap_account, dovecot)
    expect(error).to_have_count(0)
    imap_account.refresh_from_db()
    assert imap_account.engine == "v2"
