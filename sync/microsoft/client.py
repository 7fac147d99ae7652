"""MSAL and the Microsoft identity platform: the pieces the V3 sync needs.

A ConfidentialClientApplication is built per use from settings (MS_CLIENT_ID,
MS_CLIENT_SECRET, MS_AUTHORITY, MS_INSTANCE_DISCOVERY, MS_CA_FILE), with the
token cache of the one account it serves. msal returns protocol errors as
data and raises ValueError for a response that does not belong to the flow;
both become MicrosoftError with a code the UI translates and a flag saying
whether trying again can help. The sign-in and admin-consent flows of the
migration live in migration/microsoft/ and build on this module.
"""

import contextlib
import re

import msal
import requests
from django.conf import settings
from msal.exceptions import MsalServiceError
from urllib3.util.retry import Retry

from sync import http_caps

# The resource all delegated scopes belong to. Not MS_GRAPH_URL: that is where
# requests go (a fake in tests), this is the name of the API at Microsoft.
GRAPH_RESOURCE = "https://graph.microsoft.com"
# msal adds openid, profile and offline_access (the refresh token) by itself.
SCOPES = ["User.Read", "Mail.Read"]
# Microsoft's error-code reference (learn.microsoft.com/entra/identity-platform/reference-error-codes):
# AADSTS65001: nobody consented; 90093: the tenant allows no user consent for this
# app; 90094: admin approval needed; 90095: approval requested through the
# admin-consent workflow (the "approval" screen); 900941/900981: consent blocked by
# policy (an app that is risky or from an unverified publisher).
CONSENT_CODES = {65001, 90093, 90094, 90095, 900941, 900981}
# AADSTS65004: the user declined (pressed Cancel on the consent screen): their own choice, not an admin's.
DECLINED_CODE = 65004
# AADSTS500208: a personal Microsoft account at an authority for work or school accounts only.
PERSONAL_ACCOUNT_CODE = 500208


class MicrosoftError(Exception):
    """code: a key of migration.microsoft.errors.MESSAGES."""

    def __init__(self, code: str, *, permanent: bool, aadsts: int | None = None):
        super().__init__(code if aadsts is None else f"{code} (AADSTS{aadsts})")
        self.code = code
        self.permanent = permanent
        self.aadsts = aadsts


def configured() -> bool:
    return bool(settings.MS_CLIENT_ID and settings.MS_CLIENT_SECRET)


def instance() -> str:
    """https://login.microsoftonline.com (the authority without its tenant)."""
    return settings.MS_AUTHORITY.rsplit("/", 1)[0]


def verify():
    return settings.MS_CA_FILE or True


# MSAL's cache of Microsoft's discovery answers (OpenID configuration, kept
# for a day) shared by every app this process builds: without it each sync of
# each account would fetch the configuration again. It holds no tokens.
HTTP_CACHE: dict = {}


class SignInUnavailable(requests.RequestException):
    """429 or 5xx from the sign-in service (token, discovery): Microsoft is down or throttles.

    Raised by HttpClient before msal sees the answer. msal would raise
    MsalServiceError on a 5xx from the token endpoint, ValueError on a 429
    whose body is an HTML page (it parses the body as JSON) and ValueError on
    a 429 from discovery (taken for "no such tenant"). A RequestException is
    what msal itself treats as a network error: acquire_token_silent then
    falls back to a cached access token that is still valid.
    """

    def __init__(self, status: int, retry_after: str):
        super().__init__(f"Microsoft sign-in answered HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class HttpClient(requests.Session):
    """msal's HTTP client: our timeout and CA file on every request, 429/5xx raised as SignInUnavailable.

    Every answer is read under the caps MS_MAX_RESPONSE_BYTES (after
    decompression) and MS_MAX_RESPONSE_SECONDS (the whole request), see
    sync.http_caps; over them MicrosoftError ms_too_large / ms_too_slow, which
    msal lets through (it is no RequestException).
    """

    def __init__(self):
        super().__init__()
        # One retry of a failed connection, as msal's own client does, but no waiting out a Retry-After
        # here (urllib3 would sleep for it inside a request, up to an hour): the caller decides.
        adapter = http_caps.WatchedAdapter(
            max_retries=Retry(total=1, read=False, status=0, respect_retry_after_header=False))
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", settings.MS_TIMEOUT)
        # verify= per request: REQUESTS_CA_BUNDLE would override a session's.
        kwargs["verify"] = verify()
        kwargs["stream"] = True  # read below, under the byte cap
        with capped():
            response = super().request(method, url, **kwargs)
            if response.status_code == 429 or response.status_code >= 500:
                response.close()
                raise SignInUnavailable(response.status_code, response.headers.get("Retry-After", ""))
            http_caps.read_body(response, max_bytes=settings.MS_MAX_RESPONSE_BYTES)
        return response


@contextlib.contextmanager
def capped():
    """MS_MAX_RESPONSE_SECONDS for the requests in the block; the caps' errors as MicrosoftError."""
    try:
        with http_caps.deadline(settings.MS_MAX_RESPONSE_SECONDS):
            yield
    except http_caps.TooLarge:
        raise MicrosoftError("ms_too_large", permanent=False) from None
    except http_caps.TooSlow:
        raise MicrosoftError("ms_too_slow", permanent=False) from None


# What an outage of the sign-in service looks like to a caller of msal: a
# network error, or msal's MsalServiceError (raised for a 4xx/5xx answer
# wherever msal calls raise_for_status()).
UNAVAILABLE = (requests.RequestException, MsalServiceError)


def build_app(*, authority: str | None = None, cache: msal.SerializableTokenCache | None = None):
    if not configured():
        raise MicrosoftError("ms_not_configured", permanent=True)
    try:
        # Building the app fetches the authority's OpenID configuration.
        return msal.ConfidentialClientApplication(
            settings.MS_CLIENT_ID, client_credential=settings.MS_CLIENT_SECRET,
            authority=authority or settings.MS_AUTHORITY, instance_discovery=settings.MS_INSTANCE_DISCOVERY,
            http_client=HttpClient(), token_cache=cache, http_cache=HTTP_CACHE,
        )
    except UNAVAILABLE:
        raise MicrosoftError("ms_unreachable", permanent=False) from None
    except ValueError:  # a tenant Microsoft does not know, or a discovery answer that is not https
        raise MicrosoftError("ms_protocol", permanent=True) from None


def aadsts_codes(response: dict) -> set[int]:
    codes = {int(c) for c in response.get("error_codes") or [] if str(c).isdigit()}
    codes.update(int(c) for c in re.findall(r"AADSTS(\d+)", str(response.get("error_description", ""))))
    return codes


def needs_admin_consent(response: dict) -> bool:
    error = str(response.get("error", ""))
    if DECLINED_CODE in aadsts_codes(response):
        return False
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
    if DECLINED_CODE in codes:
        return MicrosoftError("ms_declined", permanent=True, aadsts=DECLINED_CODE)
    if PERSONAL_ACCOUNT_CODE in codes:
        return MicrosoftError("ms_personal_account", permanent=True, aadsts=PERSONAL_ACCOUNT_CODE)
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
    except UNAVAILABLE:
        raise MicrosoftError("ms_unreachable", permanent=False) from None
    if not result:  # no refresh token in the cache
        raise MicrosoftError("ms_reconnect", permanent=True)
    if "error" in result:
        if result.get("error") in ("invalid_grant", "interaction_required", "login_required"):
            raise MicrosoftError("ms_reconnect", permanent=True, aadsts=min(aadsts_codes(result), default=None))
        raise error_from(result)
    return result["access_token"], (cache.serialize() if cache.has_state_changed else None)


