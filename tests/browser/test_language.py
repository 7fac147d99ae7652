"""The DE/EN switch in the header."""

from pathlib import Path

import pytest
from django.conf import settings
from playwright.sync_api import expect

from tests.browser.conftest import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

ENGLISH_CATALOG = Path(settings.LOCALE_PATHS[0]) / "en" / "LC_MESSAGES" / "django.mo"


@pytest.mark.xfail(
    not ENGLISH_CATALOG.exists(), strict=True,
    reason=f"English translations not compiled yet ({ENGLISH_CATALOG} missing): the labels stay German",
)
def test_en_switches_the_page_to_english(page, live_server, user, artifacts):
    sign_in(page, live_server, user.email)
    nav = page.get_by_role("navigation", name="Hauptnavigation")
    expect(nav.get_by_role("link", name="Einstellungen")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "de")

    page.locator(".langswitch").get_by_role("button", name="EN").click()

    # The switch itself works without any catalog: the language is remembered.
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator(".langswitch").get_by_role("button", name="EN")).to_have_attribute("aria-pressed", "true")
    page.screenshot(path=str(artifacts / "language-en.png"), full_page=True)
    # The labels need locale/en compiled.
    expect(page.locator(".mainnav").get_by_role("link", name="Settings", exact=True)).to_be_visible()
    expect(page.locator(".mainnav")).not_to_contain_text("Einstellungen")

    page.locator(".langswitch").get_by_role("button", name="DE").click()
    expect(page.locator(".mainnav").get_by_role("link", name="Einstellungen")).to_be_visible()
