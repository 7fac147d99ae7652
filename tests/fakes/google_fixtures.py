"""Fixtures for the Google tests (import them into a test module).

fake_google_server: the fake Google (tests.fakes.google), once per session.
google: that fake, reset, with the portal's settings pointing at it.
gmail_dovecot: a real Dovecot standing in for imap.gmail.com, which accepts
SASL XOAUTH2 through its oauth2 passdb (Dovecot 2.3, "Open Authentication v2.0
database": tokeninfo_url, username_attribute = email) and asks the fake
Google's tokeninfo endpoint for each token; a revoked or unknown token is
refused. Its mailboxes also have a password, for the tests to deliver mail.
"""

import pytest
from django.urls import reverse

from portal.devservers import Dovecot
from tests.fakes.google import FakeGoogle


@pytest.fixture(scope="session")
def fake_google_server():
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def gmail_dovecot(fake_google_server):
    server = Dovecot({}, pool_size=40)
    conf = server.base / "dovecot-oauth2.conf.ext"
    conf.write_text(f"tokeninfo_url = {fake_google_server.tokeninfo_base}/tokeninfo?access_token=\n"
                    "username_attribute = email\n")
    server.extra_config = ("auth_mechanisms = plain login xoauth2 oauthbearer\n"
                           f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {conf}\n}}\n")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def google(fake_google_server, settings):
    fake = fake_google_server
    fake.reset()
    fake.redirect_uris.add(settings.SITE_URL.rstrip("/") + reverse("google-callback"))
    settings.GOOGLE_CLIENT_ID, settings.GOOGLE_CLIENT_SECRET = fake.client_id, fake.client_secret
    settings.GOOGLE_AUTH_URL = f"{fake.base}/o/oauth2/v2/auth"
    settings.GOOGLE_TOKEN_URL = f"{fake.base}/token"
    settings.GOOGLE_USERINFO_URL = f"{fake.base}/v1/userinfo"
    settings.GOOGLE_GMAIL_URL = fake.base
    settings.GOOGLE_CA_FILE = str(fake.cert_path)
    return fake


@pytest.fixture
def gmail(google, gmail_dovecot, settings):
    """Gmail's IMAP is the local Dovecot: (fake Google, Dovecot); settings trust and reach it."""
    settings.GOOGLE_IMAP_HOST, settings.GOOGLE_IMAP_PORT = "127.0.0.1", gmail_dovecot.tls_port
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    settings.MAIL_TLS_CA_FILE = str(gmail_dovecot.cert_path)
    return google, gmail_dovecot
