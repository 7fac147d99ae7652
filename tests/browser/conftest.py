"""Real-browser tests: Debian's Chromium driven by Playwright against live_server.

The live server and the Celery worker both run as threads in this process, so
the settings fixtures (mail_settings, campaign dates) reach them too.
"""

import os
from pathlib import Path

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM would
# otherwise refuse to be called from it (the test body queries the database).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE.parent.parent / "test-artifacts"  # gitignored
PASSWORD = "geheim-123"  # tests/conftest.py make_user()
TIMEOUT = 20_000  # ms: a migration step on the real worker takes well under that

CHROMIUM = "/usr/bin/chromium"


def pytest_configure(config):
    # pytest-base-url (pulled in by pytest-playwright) defines a session fixture
    # as an instance method; nothing of ours to fix.
    config.addinivalue_line(
        "filterwarnings", "ignore:Session-scoped fixtures defined as instance methods:pytest.PytestRemovedIn10Warning"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    # `playwright install` cannot download here; drive Debian's Chromium instead.
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    # German first, like the portal's users; the portal's default is German anyway.
    return {**browser_context_args, "locale": "de-DE", "viewport": {"width": 1280, "height": 800}}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # PBKDF2 costs ~0.3 s per user created or signed in; the login form is what we test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def artifacts():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def sign_in(page, live_server, email, password=PASSWORD):
    """Through the real allauth login form; lands on the dashboard."""
    from playwright.sync_api import expect

    page.goto(f"{live_server.url}/accounts/login/")
    page.locator("input[name=login]").fill(email)
    page.locator("input[name=password]").fill(password)
    page.locator("form:has(input[name=login]) [type=submit]").click()
    expect(page.locator(".topbar .who")).to_have_text(email, timeout=TIMEOUT)
