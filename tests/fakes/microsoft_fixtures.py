"""Fixtures and helpers for the Microsoft tests (import the fixtures into a test module).

The fake runs once per session; each test gets it reset, with the portal's
settings pointing at it: the production code path, only the hosts differ.
"""

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.urls import reverse

from migration.microsoft import client as ms_client
from tests.fakes.microsoft import FakeMicrosoft

CONTOSO = "6e5c2f0a-1b2c-4d3e-8f90-0a1b2c3d4e5f"
FABRIKAM = "0b1c2d3e-4f50-4a6b-9c7d-8e9f0a1b2c3d"


@pytest.fixture(scope="session")
def fake_microsoft_server():
    fake = FakeMicrosoft().start()
    yield fake
    fake.stop()


def register_site(fake, site_url: str) -> None:
    site = site_url.rstrip("/")
    fake.redirect_uris.update({site + reverse("microsoft-callback"), site + reverse("microsoft-admin-callback")})


@pytest.fixture
def microsoft(fake_microsoft_server, settings):
    """The fake with two tenants; contoso.com users may consent themselves."""
    fake = fake_microsoft_server
    fake.reset()
    # The fake keeps its address for the session but not its tenants: nothing of an earlier test may be cached.
    ms_client.HTTP_CACHE.clear()
    fake.redirect_uris = set()
    settings.MS_CLIENT_ID = fake.client_id
    settings.MS_CLIENT_SECRET = fake.client_secret
    settings.MS_AUTHORITY = f"{fake.base}/organizations"
    settings.MS_GRAPH_URL = fake.base
    settings.MS_INSTANCE_DISCOVERY = False
    settings.MS_CA_FILE = str(fake.cert_path)
    register_site(fake, settings.SITE_URL)
    fake.contoso = fake.add_tenant(CONTOSO, {"contoso.com"})
    fake.fabrikam = fake.add_tenant(FABRIKAM, {"fabrikam.de"}, needs_admin_consent=90094)
    fake.add_user("anna@contoso.com", fake.contoso)
    fake.add_user("chef@contoso.com", fake.contoso)
    fake.add_user("lena@fabrikam.de", fake.fabrikam)
    fake.add_user("otto@fabrikam.de", fake.fabrikam)
    return fake


@pytest.fixture
def ms_account(make_account, user):
    """anna@contoso.com, a V2 Microsoft account of `user`."""
    return make_account(user, "anna@contoso.com", provider_kind="microsoft")


def browser_get(fake, url: str) -> str:
    """What a browser does at Microsoft: GET the URL, return where it redirects to."""
    response = requests.get(url, verify=str(fake.cert_path), allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def local(url: str) -> str:
    """The path and query of a portal URL, for Django's test client."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def query_of(url: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def sign_in(client, fake, migration):
    """Press "Bei Microsoft anmelden", let the fake answer, deliver the answer to the callback."""
    response = client.post(reverse("microsoft-sign-in", args=[migration.pk]))
    assert response.status_code == 302, response.content
    authorize = response["Location"]
    assert authorize.startswith(fake.base), authorize
    back = browser_get(fake, authorize)
    return client.get(local(back)), authorize, back


@pytest.fixture
def migrated(client, user, ms_account, microsoft):
    """anna@contoso.com, migrated to V3 through the real sign-in; the first sync done."""
    from migration import services, steps
    from sync.runs import sync_account

    migration = services.start_migration(user=user, account=ms_account)
    steps.run_migration(migration.pk)
    client.force_login(user)
    sign_in(client, microsoft, migration)
    assert steps.run_migration(migration.pk) == "done"
    sync_account(ms_account.pk)
    ms_account.refresh_from_db()
    return ms_account
