"""The Microsoft sign-in and admin-consent flows of the migration (MSAL).

Token handling shared with the V3 sync (build_app, access_token, the error
mapping) lives in sync.microsoft.client and is re-exported here.
"""

import re
import warnings
from urllib.parse import quote, urlencode

import msal
import requests
from django.conf import settings
from django.core.cache import cache
from django.urls import reverse

from sync.microsoft.client import (  # noqa: F401 - re-exported for the migration's modules
    CONSENT_CODES, GRAPH_RESOURCE, HTTP_CACHE, SCOPES, UNAVAILABLE, HttpClient, MicrosoftError, SignInUnavailable,
    aadsts_codes, access_token, build_app, configured, error_from, instance, load_cache, needs_admin_consent, verify,
)

# What the sign-in asks for: SCOPES plus the ones msal adds by itself (msal.oauth2cli
# reserved scopes). The admin consents to exactly these, so a user's later sign-in
# asks for nothing an admin did not grant (a missing one would block it again).
SIGN_IN_RESERVED_SCOPES = ["openid", "profile", "offline_access"]
ADMIN_CONSENT_SCOPES = SIGN_IN_RESERVED_SCOPES + [f"{GRAPH_RESOURCE}/{scope}" for scope in SCOPES]
# Keys of the redirect back to us that the code exchange needs; nothing else is kept.
AUTH_RESPONSE_KEYS = ("code", "state", "client_info", "session_state")


def redirect_uri() -> str:
    return settings.SITE_URL.rstrip("/") + reverse("microsoft-callback")


def admin_redirect_uri() -> str:
    return settings.SITE_URL.rstrip("/") + reverse("microsoft-admin-callback")


def begin_sign_in(*, login_hint: str, select_account: bool = False) -> dict:
    """Start an auth code flow with PKCE; the dict goes into the user's session."""
    app = build_app()
    with warnings.catch_warnings():
        # msal recommends form_post; we use query on purpose: the session
        # cookie (SameSite=Lax) only comes along on a top-level GET.
        warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended")
        return app.initiate_auth_code_flow(
            SCOPES, redirect_uri=redirect_uri(), login_hint=login_hint,
            prompt="select_account" if select_account else None,
        )


def auth_response_from(params) -> dict:
    return {key: str(params[key])[:4096] for key in AUTH_RESPONSE_KEYS if key in params}


def redeem(flow: dict, auth_response: dict) -> tuple[dict, msal.SerializableTokenCache]:
    """Exchange the code (checks state, PKCE and nonce). Returns (result, cache)."""
    cache = msal.SerializableTokenCache()
    app = build_app(cache=cache)
    try:
        result = app.acquire_token_by_auth_code_flow(dict(flow), auth_response, scopes=SCOPES)
    except (ValueError, RuntimeError):  # state or nonce of another flow
        raise MicrosoftError("ms_state_mismatch", permanent=True) from None
    except UNAVAILABLE:
        raise MicrosoftError("ms_unreachable", permanent=False) from None
    if "error" in result:
        raise error_from(result)
    if "access_token" not in result:
        raise MicrosoftError("ms_protocol", permanent=False)
    return result, cache


def admin_consent_url(*, tenant: str, state: str) -> str:
    """Microsoft's admin-consent endpoint for one tenant (never common/organizations)."""
    query = urlencode({
        "client_id": settings.MS_CLIENT_ID, "scope": " ".join(ADMIN_CONSENT_SCOPES),
        "redirect_uri": admin_redirect_uri(), "state": state,
    })
    # One path segment, whatever the tenant holds: a "/", "?" or "#" in it must
    # not steer the admin to another tenant (common) or another endpoint.
    return f"{instance()}/{quote(tenant, safe='')}/v2.0/adminconsent?{query}"


_ISSUER_TENANT = re.compile(r"/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})/v2\.0/?$")
DIRECTORY_CACHE_SECONDS = 24 * 3600


# The directory of personal Microsoft accounts: the tid claim of their tokens ("ID token claims reference":
# 9188040d-6c67-4c5b-b112-36a304b66dad), and the Microsoft-account tenant that v1 tokens name instead.
PERSONAL_TENANTS = frozenset({"9188040d-6c67-4c5b-b112-36a304b66dad", "f8cdef31-a31e-4b4a-93e4-5f571e91255a"})


def domain_directory(tenant: str) -> str:
    """The directory (tenant) id Microsoft publishes for a domain; "" if it knows none.

    Read from the issuer of the public OpenID configuration
    ({instance}/{domain}/v2.0/.well-known/openid-configuration), so it needs
    no token and comes from Microsoft, not from a callback's parameters. One
    directory may own several mail domains (contoso.com, contoso.de). Cached
    for a day. Raises MicrosoftError("ms_unreachable", permanent=False) when
    Microsoft is down, throttles or cannot be reached: that says nothing
    about the domain.
    """
    key = f"ms:directory:{tenant.lower()}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    url = f"{instance()}/{quote(tenant, safe='')}/v2.0/.well-known/openid-configuration"
    session = HttpClient()  # MSAL's client: our timeout, CA file and caps (MS_MAX_RESPONSE_BYTES/SECONDS)
    try:
        response = session.get(url, allow_redirects=False)
        if response.status_code == 429 or response.status_code >= 500:
            raise MicrosoftError("ms_unreachable", permanent=False)
        issuer = str(response.json().get("issuer", "")) if response.status_code == 200 else ""
    except MicrosoftError:
        raise  # over a cap (ms_too_large / ms_too_slow), or the outage above
    except (requests.RequestException, ValueError, AttributeError):
        # unreachable, throttled (SignInUnavailable), not JSON: an outage says nothing about the tenant
        raise MicrosoftError("ms_unreachable", permanent=False) from None
    finally:
        session.close()
    match = _ISSUER_TENANT.search(issuer)
    found = match[1].lower() if match else ""
    cache.set(key, found, DIRECTORY_CACHE_SECONDS)
    return found


def directory_id(tenant: str) -> str:
    """domain_directory, with "" (unknown for now) when Microsoft cannot be asked."""
    try:
        return domain_directory(tenant)
    except MicrosoftError:
        return ""


def prove_admin_consent(tenant: str) -> bool:
    """True once the app can get a token in that tenant (its service principal exists).

    This shows the app is registered in the tenant, which happens with the
    first consent; it does not show which delegated permissions were granted.
    The user's next sign-in is the final proof (a missing permission sends the
    migration back to "awaiting admin consent").

    An admin-consent callback proves nothing by itself: anyone can call our
    callback URL with admin_consent=True.
    """
    app = build_app(authority=f"{instance()}/{quote(tenant, safe='')}")
    try:
        result = app.acquire_token_for_client([f"{GRAPH_RESOURCE}/.default"])
    except UNAVAILABLE:
        raise MicrosoftError("ms_unreachable", permanent=False) from None
    return bool(result and "access_token" in result)


def signed_in_identities(id_token_claims: dict) -> set[str]:
    return {str(id_token_claims.get(k, "")).strip().lower() for k in ("preferred_username", "email", "upn")} - {""}
