"""The IMAP migration with the keyboard alone: Tab, Shift+Tab, Enter and Space, typing into fields.

Chromium, live_server, the real Celery worker and the real Dovecot, like test_journey.py, but the mouse is
never used: from the sign-in over the banner link, the "Zu V3 migrieren" button and the login form to
"Migration abgeschlossen" and back. Every element the Tab key reaches on the way must show where the focus
is (a visible outline, WCAG 2.4.7), and it takes a bounded number of key presses to reach each target.
"""

import re

import pytest
from playwright.sync_api import expect

from migration.models import Migration
from tests.browser.conftest import PASSWORD, TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)

MAX_TABS = 40  # more than this to reach a control on these short pages would be a problem in itself

FOCUSED = """() => {
    const el = document.activeElement;
    if (!el || el === document.body) return null;
    const style = getComputedStyle(el);
    return {
        tag: el.tagName.toLowerCase(), name: el.name || '', id: el.id || '',
        text: (el.innerText || el.value || '').trim().slice(0, 60), href: el.getAttribute('href') || '',
        focusVisible: el.matches(':focus-visible'),
        outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 1
            ? style.outlineWidth + ' ' + style.outlineStyle : '',
    };
}"""


class Keyboard:
    """Presses keys on a page and records every element the focus passed through without a visible outline."""

    def __init__(self, page):
        self.page = page
        self.unmarked = []
        self.presses = 0

    def focused(self) -> dict | None:
        return self.page.evaluate(FOCUSED)

    def tab_to(self, matches, what: str, *, backwards=False) -> dict:
        """Tab (or Shift+Tab) until matches(focused) is true; checks the focus ring at every stop."""
        for _ in range(MAX_TABS):
            self.page.keyboard.press("Shift+Tab" if backwards else "Tab")
            self.presses += 1
            element = self.focused()
            if element is None:
                continue
            if not (element["focusVisible"] and element["outline"]):
                self.unmarked.append(f"{self.page.url}: {element}")
            if matches(element):
                return element
        raise AssertionError(f"{what} is not reachable with {MAX_TABS} presses of Tab on {self.page.url}")

    def press(self, key: str):
        self.page.keyboard.press(key)
        self.presses += 1


def test_it_migrates_an_imap_account_with_the_keyboard_alone(
    page, live_server, imap_account, dovecot, mailbox, mail_settings, celery_worker_thread, artifacts
):
    address, password = mailbox
    keys = Keyboard(page)

    # Sign in: the cursor starts in the e-mail field.
    page.goto(f"{live_server.url}/accounts/login/")
    assert keys.focused()["name"] == "login"
    page.keyboard.type(imap_account.owner.email)
    keys.tab_to(lambda e: e["name"] == "password", "the password field")
    page.keyboard.type(PASSWORD)
    keys.press("Enter")
    expect(page.locator(".topbar .who")).to_have_text(imap_account.owner.email, timeout=TIMEOUT)

    # The banner names the address; its link leads to the account's row on the settings page.
    expect(page.get_by_test_id("v2-banner")).to_be_visible()
    keys.tab_to(lambda e: e["tag"] == "a" and e["text"] == imap_account.address, "the banner's link")
    keys.press("Enter")
    expect(page).to_have_url(re.compile(rf"/einstellungen/email-synchronisierung/#account-{imap_account.pk}$"))

    # From the highlighted row the next Tab stops reach its "Zu V3 migrieren"; Space presses it.
    keys.tab_to(lambda e: e["tag"] == "button" and e["text"] == "Zu V3 migrieren", '"Zu V3 migrieren"')
    keys.press("Space")
    expect(page).to_have_url(re.compile(r"/migration/\d+/$"))
    migration = Migration.objects.get(account=imap_account)

    # The form appears by itself once the server is detected, with the cursor in the password field.
    expect(page.get_by_label("Passwort")).to_be_visible(timeout=TIMEOUT)
    expect(page.get_by_label("Passwort")).to_be_focused()
    page.keyboard.type(password)
    page.screenshot(path=str(artifacts / "keyboard-1-form.png"), full_page=True)
    # The server settings open with Enter on their summary, and close again, without the mouse.
    keys.tab_to(lambda e: e["tag"] == "summary", 'the "Servereinstellungen" summary')
    keys.press("Enter")
    expect(page.get_by_label("IMAP-Server")).to_be_visible()
    keys.press("Enter")
    expect(page.get_by_label("IMAP-Server")).to_be_hidden()
    keys.tab_to(lambda e: e["tag"] == "button" and e["text"] == "Verbinden und migrieren", "the submit button")
    keys.press("Enter")

    done = page.get_by_test_id("done")
    expect(done).to_be_visible(timeout=TIMEOUT)
    expect(done).to_have_text("Migration abgeschlossen")
    page.screenshot(path=str(artifacts / "keyboard-2-done.png"), full_page=True)

    keys.tab_to(lambda e: e["tag"] == "a" and e["text"] == "Zurück zu den Einstellungen", "the way back")
    keys.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Persönliche E-Mail-Synchronisierung")
    expect(page.get_by_test_id("v2-banner")).to_have_count(0)
    expect(page.locator(f"#account-{imap_account.pk} .badge")).to_have_text("V3")

    migration.refresh_from_db()
    imap_account.refresh_from_db()
    assert migration.status == "done" and imap_account.engine == "v3"
    assert not keys.unmarked, "focus without a visible outline:\n" + "\n".join(keys.unmarked)
    assert keys.presses < 4 * MAX_TABS, keys.presses
