"""MSAL and the Microsoft identity platform.

A ConfidentialClientApplication is built per use from settings (MS_CLIENT_ID,
MS_CLIENT_SECRET, MS_AUTHORITY, MS_INSTANCE_DISCOVERY, MS_CA_FILE), with the
token cache of the one account it serves. msal returns protocol errors as
data and raises ValueError for a response that does not belong to the flow;
both become MicrosoftError with a code the UI translates and a flag saying
whether trying again can help.
"""

import re
import warnings
from urllib.parse import quote, urlencode

import msal
import requests
from django.conf import settings
from django.core.cache import cache
from django.urls import reverse

# The resource all delegated scopes belong to. Not MS_GRAPH_URL: that is where
# requests go (a fake in tests), this is the name of the API at Microsoft.
GRAPH_RESOURCE = "https://graph.microsoft.com"
# msal adds openid, profile and offline_access (the refresh token) by itself.
SCOPES = ["User.Read", "Mail.Read"]
ADMIN_CONSENT_SCOPES = ["offline_access", f"{GRAPH_RESOURCE}/User.Read", f"{GRAPH_RESOURCE}/Mail.Read"]
# AADSTS65001: nobody consented; 90094: admin approval needed; 90095: approval
# requested through the admin-consent workflow (the "approval" screen).
CONSENT_CODES = {65001, 90094, 90095}
# Keys of the redirect back to us that the code exchange needs; nothing else is kept.
AUTH_RESPONSE_KEYS = ("code", "state", "client_info", "session_state")


class MicrosoftError(Exception):
    """code: a key of migration.microsoft.errors.MESSAGES."""

    def __init__(self, code: str, *, permanent: bool, aadsts: int | None = None):
        super().__init__(code if aadsts is None else f"{code} (AADSTS{aadsts})")
        self.code = code
        self.permanent = permanent
        self.aadsts = aadsts


def configured() -> bool:
    return bool(settings.MS_CLIENT_ID and settings.MS_CLIENT_SECRET)


def redirect_uri() -> str:
    return settings.SITE_URL.rstrip("/") + reverse("microsoft-callback")


def admin_redirect_uri() -> str:
    return settings.SITE_URL.rstrip("/") + reverse("microsoft-admin-callback")


def instance() -> str:
    """https://login.microsoftonline.com (the authority without its tenant)."""
    return settings.MS_AUTHORITY.rsplit("/", 1)[0]


def verify():
    return settings.MS_CA_FILE or True


# MSAL's cache of Microsoft's discovery answers (OpenID configuration, kept
# for a day) shared by every app this process builds: without it each sync of
# each account would fetch the configuration again. It holds no tokens.
HTTP_CACHE: dict = {}


def build_app(*, authority: str | None = None, cache: msal.SerializableTokenCache | None = None):
    if not configured():
        raise MicrosoftError("ms_not_configured", permanent=True)
    try:
        # Building the app fetches the authority's OpenID configuration.
        return msal.ConfidentialClientApplication(
            settings.MS_CLIENT_ID, client_credential=settings.MS_CLIENT_SECRET,
            authority=authority or settings.MS_AUTHORITY, instance_discovery=settings.MS_INSTANCE_DISCOVERY,
            verify=verify(), timeout=settings.MS_TIMEOUT, token_cache=cache, http_cache=HTTP_CACHE,
        )
    except requests.RequestException:
        raise MicrosoftError("ms_unreachable", permanent=False) from None
    except ValueError:  # a tenant Microsoft does not know, or a discovery answer that is not https
        raise MicrosoftError("ms_protocol", permanent=True) from None


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
    except requests.RequestException:
        raise MicrosoftError("ms_unreachable", permanent=False) from None
    if "error" in result:
        raise error_from(result)
    if "access_token" not in result:
        raise MicrosoftError("ms_protocol", permanent=False)
    return result, cache


def aadsts_codes(response: dict) -> set[int]:
    codes = {int(c) for c in response.get("error_codes") or [] if str(c).isdigit()}
    codes.update(int(c) for c in re.findall(r"AADSTS(\d+)", str(response.get("error_description", ""))))
    return codes


def needs_admin_consent(response: dict) -> bool:
    error = str(response.get("error", ""))
    if error == "consent_required" or response.get("error_subcode") == "consent_required":
        return True
    # access_denied after the "Need admin approval" / "Approval required" screen carries 90094/90095.
    return bool(aadsts_codes(response) & CONSENT_CODES)


def error_from(response: dict) -> MicrosoftError:
    codes = aadsts_codes(response)
    first = min(codes) if codes else None
    if needs_admin_consent(response):
        return MicrosoftError("ms_admin_consent", permanent=True, aadsts=first)
    error = response.get("error")
    if error == "access_denied":
        return MicrosoftError("ms_denied", permanent=True, aadsts=first)
    if error in ("invalid_grant", "interaction_required", "login_required"):
        return MicrosoftError("ms_code_rejected", permanent=True, aadsts=first)
    if error in ("temporarily_unavailable", "server_error"):
        return MicrosoftError("ms_unreachable", permanent=False, aadsts=first)
    return MicrosoftError("ms_protocol", permanent=True, aadsts=first)


def load_cache(serialized: str) -> msal.SerializableTokenCache:
    cache = msal.SerializableTokenCache()
    if serialized:
        cache.deserialize(serialized)
    return cache


def access_token(serialized_cache: str, *, home_account_id: str, force_refresh: bool = False) -> tuple[str, str | None]:
    """A valid access token from the account's cache, refreshed when needed.

    Returns (token, the cache serialized again if MSAL changed it, else None).
    A refresh token that was revoked or expired raises ms_reconnect.
    """
    cache = load_cache(serialized_cache)
    app = build_app(cache=cache)
    account = next((a for a in app.get_accounts() if a.get("home_account_id") == home_account_id), None)
    if account is None:
        raise MicrosoftError("ms_reconnect", permanent=True)
    try:
        result = app.acquire_token_silent_with_error(SCOPES, account, force_refresh=force_refresh)
    except requests.RequestException:
        raise MicrosoftError("ms_unreachable", permanent=False) from None
    if not result:  # no refresh token in the cache
        raise MicrosoftError("ms_reconnect", permanent=True)
    if "error" in result:
        if result.get("error") in ("invalid_grant", "interaction_required", "login_required"):
            raise MicrosoftError("ms_reconnect", permanent=True, aadsts=min(aadsts_codes(result), default=None))
        raise error_from(result)
    return result["access_token"], (cache.serialize() if cache.has_state_changed else None)


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


def directory_id(tenant: str) -> str:
    """The directory (tenant) id Microsoft publishes for a domain; "" if it knows none.

    Read from the issuer of the public OpenID configuration, so it needs no
    token and comes from Microsoft, not from a callback's parameters. One
    directory may own several mail domains (contoso.com, contoso.de).
    """
    key = f"ms:directory:{tenant.lower()}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    url = f"{instance()}/{quote(tenant, safe='')}/v2.0/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.MS_TIMEOUT, verify=verify(), allow_redirects=False)
        issuer = str(response.json().get("issuer", "")) if response.status_code == 200 else ""
    except (requests.RequestException, ValueError):
        return ""  # not known now; ask again next time
    match = _ISSUER_TENANT.search(issuer)
    found = match[1].lower() if match else ""
    cache.set(key, found, DIRECTORY_CACHE_SECONDS)
    return found


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
    except requests.RequestException:
        raise MicrosoftError("ms_unreachable", permanent=False) from None
    return bool(result and "access_token" in result)


def signed_in_identities(id_token_claims: dict) -> set[str]:
    return {str(id_token_claims.get(k, "")).strip().lower() for k in ("preferred_username", "email", "upn")} - {""}
