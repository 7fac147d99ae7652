"""The Content-Security-Policy blocks nothing the portal or the admin needs: Chromium reports no violation.

Also the guard for what the policy forbids: the templates and static files hold no inline script,
style or event handler (a nonce-less policy would block them silently).
"""

import re
from pathlib import Path

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, sign_in
from tests.conftest import make_user

pytestmark = pytest.mark.django_db  # live_server makes its tests transactional itself

ROOT = Path(__file__).resolve().parent.parent.parent
INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I), "inline <script>"),
    (re.compile(r"<style\b", re.I), "<style> element"),
    (re.compile(r"\sstyle=", re.I), "style attribute"),
    (re.compile(r"\son[a-z]+=", re.I), "event handler attribute"),
    (re.compile(r"javascript:", re.I), "javascript: URL"),
]


def test_no_template_holds_inline_script_or_style():
    found = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text(encoding="utf-8")
        found += [f"{path.relative_to(ROOT)}: {what}" for pattern, what in INLINE if pattern.search(text)]
    assert found == []


def test_no_script_evaluates_strings():
    found = [path.name for path in (ROOT / "static").rglob("*.js")
             if re.search(r"\beval\(|new Function\(|setTimeout\(\s*['\"]", path.read_text(encoding="utf-8"))]
    assert found == []


def _watch_violations(page) -> list[str]:
    violations = []
    page.on("console", lambda message: violations.append(message.text)
            if "Content Security Policy" in message.text else None)
    return violations


def test_portal_and_admin_pages_run_under_the_policy(page, live_server, django_user_model, make_account):
    staff = make_user(django_user_model, "support@example.com")
    django_user_model.objects.filter(pk=staff.pk).update(is_staff=True, is_superuser=True)
    account = make_account(staff, "support@firma.example", imap_host="imap.firma.example")
    violations = _watch_violations(page)

    sign_in(page, live_server, staff.email, PASSWORD)
    for url in (reverse("dashboard"), reverse("settings-mail"), reverse("message-list")):
        response = page.goto(live_server.url + url)
        assert response.status == 200 and "script-src 'self'" in response.headers["content-security-policy"]
    # The admin's own scripts (actions, filters, the sidebar, the theme toggle) and styles.
    page.goto(live_server.url + reverse("admin:sync_mailaccount_changelist"))
    expect(page.locator("#changelist")).to_be_visible()
    page.locator("#action-toggle").check()  # actions.js ticks every row
    expect(page.locator("input.action-select").first).to_be_checked()
    page.goto(live_server.url + reverse("admin:sync_mailaccount_change", args=[account.pk]))
    expect(page.locator("#mailaccount_form")).to_be_visible()
    page.goto(live_server.url + reverse("admin:axes_accessattempt_changelist"))
    expect(page.locator("#changelist")).to_be_visible()
    assert violations == []
