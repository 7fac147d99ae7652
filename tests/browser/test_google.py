"""The Google path in Chromium: the picker's Google button, Sign in with Google at the fake Google,
and the migration finishing by itself (worker verifying over IMAP with XOAUTH2 against Dovecot)."""

import re

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from migration.models import Migration
from portal.devservers import make_message
from sync import crypto
from sync.models import MailAccount
from tests.browser.conftest import TIMEOUT, sign_in
from tests.fakes.google_fixtures import fake_google_server, gmail, gmail_dovecot, google  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    # The fake Google serves a throw-away self-signed certificate.
    return {**browser_context_args, "ignore_https_errors": True}


def test_a_user_picks_google_signs_in_and_the_migration_finishes(
    page, live_server, settings, user, make_account, gmail, celery_worker_thread, artifacts
):
    fake, dovecot = gmail
    settings.SITE_URL = live_server.url
    fake.redirect_uris.add(live_server.url + reverse("google-callback"))
    address, password = dovecot.take_mailbox()
    fake.add_user(address)
    dovecot.deliver(address, make_message(subject="Angebot"))
    account = make_account(user, address, imap_host="127.0.0.1", imap_port=dovecot.tls_port, imap_security="ssl",
                           username=address, secret_encrypted=crypto.encrypt_json({"password": password}))

    sign_in(page, live_server, user.email)
    page.goto(f"{live_server.url}/einstellungen/email-synchronisierung/")
    page.locator(f"#account-{account.pk}").get_by_role("button", name="Zu V3 migrieren").click()
    expect(page).to_have_url(re.compile(r"/migration/\d+/$"))
    expect(page.get_by_test_id("back")).to_be_visible(timeout=TIMEOUT)
    page.get_by_test_id("back").click()
    page.get_by_role("button", name="Google (Gmail, Google Workspace)").click()
    expect(page.get_by_test_id("google-sign-in")).to_contain_text("App-Passwort")
    page.screenshot(path=str(artifacts / "google-1-sign-in.png"), full_page=True)
    page.get_by_role("button", name="Bei Google anmelden").click()  # to Google and back

    done = page.get_by_test_id("done")
    expect(done).to_be_visible(timeout=TIMEOUT)
    page.screenshot(path=str(artifacts / "google-2-done.png"), full_page=True)
    migration = Migration.objects.get(account=account)
    assert (migration.status, migration.provider_kind) == ("done", "google")
    account = MailAccount.objects.get(pk=account.pk)
    assert (account.engine, account.provider_kind) == ("v3", "google")


def test_a_refused_sign_in_does_not_greet_the_user_again_after_a_detour(
    page, live_server, settings, user, make_account, google, artifacts
):
    from migration.selectors import current_campaign

    settings.SITE_URL = live_server.url
    google.redirect_uris.add(live_server.url + reverse("google-callback"))
    google.add_user("lena@firma.test")
    google.add_user("privat@gmail.com")
    google.signs_in_as = "privat@gmail.com"  # the browser's other Google account
    account = make_account(user, "lena@firma.test")
    migration = Migration.objects.create(account=account, user=user, campaign=current_campaign(),
                                         provider_kind="google", status="awaiting_user")

    sign_in(page, live_server, user.email)
    page.goto(f"{live_server.url}{reverse('migration-detail', args=[migration.pk])}")
    page.get_by_role("button", name="Bei Google anmelden").click()
    error = page.get_by_test_id("google-error")
    expect(error).to_contain_text("mit einem anderen Konto angemeldet", timeout=TIMEOUT)
    page.screenshot(path=str(artifacts / "google-3-wrong-account.png"), full_page=True)

    page.get_by_test_id("back").click()  # a look at IMAP, then back to Google
    page.get_by_role("link", name="Alle Anbieter anzeigen").click()
    page.locator(".providers").get_by_role("button", name="Anderer IMAP-Anbieter", exact=True).click()
    expect(page.get_by_label("Passwort")).to_be_visible()
    expect(page.locator("main")).not_to_contain_text("anderen Konto")
    page.get_by_test_id("back").click()
    page.get_by_role("button", name="Google (Gmail, Google Workspace)").click()
    expect(page.get_by_role("button", name="Bei Google anmelden")).to_be_visible()
    expect(error).to_have_count(0)

    google.signs_in_as = None  # now with the right account
    page.get_by_role("button", name="Bei Google anmelden").click()
    expect(page.get_by_test_id("google-sign-in")).to_have_count(0, timeout=TIMEOUT)
    assert Migration.objects.get(pk=migration.pk).status in ("verifying", "handing_over", "done", "failed")

