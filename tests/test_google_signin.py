"""Google sign-in (OAuth 2.0 code + PKCE + login_hint, offline access) against the fake Google over HTTPS.

The flow functions only; the migration through the views, the worker and Gmail's IMAP is
tests/test_google_migration.py.
"""

import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from migration.google import flow
from sync.google import oauth
from sync.google.oauth import GoogleError
from tests.fakes.google import FakeGoogle

REDIRECT = "https://crm.example/migration/google/callback/"


@pytest.fixture(scope="module")
def google_server():
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture
def google(google_server, settings):
    fake = google_server
    fake.reset()
    fake.redirect_uris.add(REDIRECT)
    settings.GOOGLE_CLIENT_ID, settings.GOOGLE_CLIENT_SECRET = fake.client_id, fake.client_secret
    settings.GOOGLE_AUTH_URL = f"{fake.base}/o/oauth2/v2/auth"
    settings.GOOGLE_TOKEN_URL = f"{fake.base}/token"
    settings.GOOGLE_USERINFO_URL = f"{fake.base}/v1/userinfo"
    settings.GOOGLE_GMAIL_URL = fake.base
    settings.GOOGLE_CA_FILE = str(fake.cert_path)
    fake.add_user("anna@gmail.com")
    fake.add_user("ben@firma.test", aliases=["info@firma.test"])
    return fake


def _sign_in(google, session, address="anna@gmail.com", purpose="m1"):
    """What the browser does: follow the authorization URL to Google and back; the callback's query."""
    url = flow.begin(session=session, purpose=purpose, address=address, redirect_uri=REDIRECT)
    response = requests.get(url, verify=str(google.cert_path), allow_redirects=False, timeout=5)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_it_asks_google_for_offline_mail_access_with_pkce_and_the_address_as_hint(google):
    url = flow.begin(session={}, purpose="m1", address="anna@gmail.com", redirect_uri=REDIRECT)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(google.base + "/o/oauth2/v2/auth?")
    assert query["login_hint"] == "anna@gmail.com" and query["access_type"] == "offline"
    assert query["prompt"] == "consent" and query["code_challenge_method"] == "S256"
    assert query["scope"].split() == ["openid", "email", "https://mail.google.com/"]
    assert len(query["state"]) >= 32 and "code_verifier" not in query


def test_it_signs_in_and_returns_a_grant_with_a_refresh_token(google):
    session = {}
    purpose, grant = flow.complete(session=session, params=_sign_in(google, session))
    assert purpose == "m1" and grant["kind"] == "google" and grant["email"] == "anna@gmail.com"
    assert grant["refresh_token"] in google.refresh_tokens and grant["access_token"] in google.access_tokens
    assert grant["expires_at"] > time.time() + 3000
    assert session[flow.SESSION_KEY] == {}  # single use


def test_the_state_is_single_use_and_bound_to_the_session(google):
    session = {}
    params = _sign_in(google, session)
    with pytest.raises(GoogleError) as other_session:
        flow.complete(session={}, params=params)
    assert other_session.value.code == "google_state_mismatch"
    flow.complete(session=session, params=params)
    with pytest.raises(GoogleError) as replayed:
        flow.complete(session=session, params=params)
    assert replayed.value.code == "google_state_mismatch"


def test_a_wrong_pkce_verifier_is_refused_by_google(google):
    session = {}
    params = _sign_in(google, session)
    session[flow.SESSION_KEY][params["state"]]["verifier"] = "forged-verifier"
    with pytest.raises(GoogleError) as error:
        flow.complete(session=session, params=params)
    assert error.value.code == "google_reconnect"  # Google: invalid_grant


def test_it_refuses_another_google_account(google):
    google.add_user("fremd@gmail.com")
    google.signs_in_as = "fremd@gmail.com"
    session = {}
    with pytest.raises(GoogleError) as error:
        flow.complete(session=session, params=_sign_in(google, session))
    assert error.value.code == "google_wrong_account"


def test_it_accepts_an_alias_of_the_signed_in_account_and_googlemail(google):
    google.signs_in_as = "ben@firma.test"
    session = {}
    _purpose, grant = flow.complete(session=session, params=_sign_in(google, session, address="info@firma.test"))
    assert grant["email"] == "ben@firma.test"
    google.signs_in_as = None
    session = {}
    _purpose, grant = flow.complete(session=session, params=_sign_in(google, session, address="anna@googlemail.com"))
    assert grant["email"] == "anna@gmail.com"


def test_it_explains_a_workspace_whose_admin_restricts_the_app(google):
    google.add_user("chef@schule.test")
    google.admin_restricted.add("schule.test")
    session = {}
    with pytest.raises(GoogleError) as error:
        flow.complete(session=session, params=_sign_in(google, session, address="chef@schule.test"))
    assert error.value.code == "google_admin_policy" and error.value.permanent


def test_it_refuses_a_grant_without_mail_access(google):
    google.unticks_mail_scope = True
    session = {}
    with pytest.raises(GoogleError) as error:
        flow.complete(session=session, params=_sign_in(google, session))
    assert error.value.code == "google_scope_missing"


def test_a_user_who_says_no_is_told_so(google):
    google.denies = True
    session = {}
    with pytest.raises(GoogleError) as error:
        flow.complete(session=session, params=_sign_in(google, session))
    assert error.value.code == "google_denied"


def test_the_refresh_token_renews_access_and_a_revoked_grant_asks_to_reconnect(google):
    session = {}
    _purpose, grant = flow.complete(session=session, params=_sign_in(google, session))
    token, same = oauth.fresh_access_token(grant)
    assert token == grant["access_token"] and same is grant  # still valid: no request
    expired = {**grant, "expires_at": time.time() - 1}
    token, renewed = oauth.fresh_access_token(expired)
    assert token != grant["access_token"] and renewed["refresh_token"] == grant["refresh_token"]
    assert oauth.userinfo(token)["email"] == "anna@gmail.com"
    google.revoke("anna@gmail.com")
    with pytest.raises(GoogleError) as error:
        oauth.fresh_access_token({**renewed, "expires_at": 0})
    assert (error.value.code, error.value.permanent) == ("google_reconnect", True)


def test_a_workspace_admin_restricting_the_app_later_stops_the_refresh(google):
    google.add_user("lena@firma2.test")
    session = {}
    _purpose, grant = flow.complete(session=session, params=_sign_in(google, session, address="lena@firma2.test"))
    google.admin_restricted.add("firma2.test")
    with pytest.raises(GoogleError) as error:
        oauth.fresh_access_token({**grant, "expires_at": 0})
    assert error.value.code == "google_admin_policy"


def test_google_is_not_set_up_without_client_id_and_secret(settings):
    settings.GOOGLE_CLIENT_ID = settings.GOOGLE_CLIENT_SECRET = ""
    assert not oauth.configured()
    with pytest.raises(GoogleError) as error:
        flow.begin(session={}, purpose="m1", address="anna@gmail.com", redirect_uri=REDIRECT)
    assert error.value.code == "google_not_configured"


def test_an_unreachable_google_is_a_transient_error(google, settings):
    settings.GOOGLE_TOKEN_URL = "https://127.0.0.1:9/token"
    with pytest.raises(GoogleError) as error:
        oauth.fresh_access_token({"refresh_token": "x", "expires_at": 0})
    assert (error.value.code, error.value.permanent) == ("google_unreachable", False)


@pytest.mark.parametrize("code", ["google_not_configured", "google_wrong_account", "google_state_mismatch",
                                  "google_denied", "google_scope_missing", "google_admin_policy",
                                  "google_reconnect", "google_unreachable", "google_protocol"])
def test_every_google_error_has_a_german_and_an_english_text(code):
    from django.utils import translation

    from migration import errors

    with translation.override("de"):
        german = str(errors.message_for(code))
    with translation.override("en"):
        english = str(errors.message_for(code))
    assert "Google" in german and german != english and "fehlgeschlagen" not in german
