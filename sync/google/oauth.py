"""Google OAuth 2.0 tokens for the V3 sync (sync never imports migration/).

Why IMAP with XOAUTH2 and the scope https://mail.google.com/: Gmail's IMAP
accepts OAuth only with that scope (https://developers.google.com/gmail/imap/
xoauth2-protocol), and over IMAP the V3 engine, its cursors, its handoff and its
exactly-once guarantees are the proven IMAP ones (sync/imap). The scope itself
is not read-only; the engine only ever SELECTs read-only (EXAMINE) and fetches
with BODY.PEEK, so nothing is changed or marked read. The Gmail API's
gmail.readonly scope would be narrower but needs a second engine (history ids)
with its own handoff; that is the alternative if Google's verification of the
restricted scope asks for it.

The grant stored encrypted on the account (MailAccount.token_cache_encrypted):
    {"kind": "google", "refresh_token": str, "access_token": str, "expires_at": float (epoch s),
     "email": the signed-in Google address}

Errors (GoogleError.code, permanent):
    google_reconnect     invalid_grant: the user or an admin revoked the grant, or it expired (permanent)
    google_admin_policy  admin_policy_enforced: the Workspace admin restricts third-party apps (permanent)
    google_unreachable   timeout, connection refused, 5xx, 429 (transient)
    google_protocol      an answer that is not OAuth JSON (transient)
"""

import time

import requests
from django.conf import settings

from sync import http_caps

SCOPES = ("openid", "email", "https://mail.google.com/")
# A token that expires within this many seconds is refreshed before use.
EXPIRY_MARGIN = 60


class GoogleError(Exception):
    def __init__(self, code: str, *, permanent: bool, detail: str = ""):
        super().__init__(code)
        self.code, self.permanent, self.detail = code, permanent, detail


def configured() -> bool:
    """Whether the portal has a Google OAuth client (GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET)."""
    return bool(settings.GOOGLE_CLIENT_ID and settings.GOOGLE_CLIENT_SECRET)


def _verify():
    return settings.GOOGLE_CA_FILE or True


def token_request(form: dict) -> dict:
    """POST to Google's token endpoint (RFC 6749 §4.1.3 / §6); the JSON answer, or GoogleError.

    The client authenticates with client_secret in the body (client_secret_post, as Google documents).
    """
    data = {**form, "client_id": settings.GOOGLE_CLIENT_ID, "client_secret": settings.GOOGLE_CLIENT_SECRET}
    response = _call("POST", settings.GOOGLE_TOKEN_URL, data=data)
    if response.status_code >= 500 or response.status_code == 429:
        raise GoogleError("google_unreachable", permanent=False)
    body = _json_object(response)
    if response.status_code != 200 or "error" in body:
        raise error_for(str(body.get("error", "")))
    if not isinstance(body.get("access_token"), str):
        raise GoogleError("google_protocol", permanent=False)
    return body


def error_for(error: str) -> GoogleError:
    """The GoogleError for an OAuth error code from the token endpoint or the redirect."""
    if error == "invalid_grant":
        return GoogleError("google_reconnect", permanent=True)
    if error == "admin_policy_enforced":
        return GoogleError("google_admin_policy", permanent=True)
    if error == "access_denied":
        return GoogleError("google_denied", permanent=True)
    return GoogleError("google_protocol", permanent=False, detail=error[:60])


def grant_from(token: dict, *, email: str, refresh_token: str = "") -> dict:
    """The stored grant shape from a token endpoint answer (refresh answers carry no new refresh token)."""
    return {"kind": "google", "refresh_token": token.get("refresh_token") or refresh_token,
            "access_token": token["access_token"], "email": email,
            "expires_at": time.time() + float(token.get("expires_in") or 3600)}


def fresh_access_token(grant: dict) -> tuple[str, dict]:
    """(access token, grant) — refreshed through the refresh token when it expires within EXPIRY_MARGIN.

    The caller stores the returned grant when it differs from the one it passed.
    """
    if grant.get("access_token") and float(grant.get("expires_at", 0)) - EXPIRY_MARGIN > time.time():
        return grant["access_token"], grant
    if not grant.get("refresh_token"):
        raise GoogleError("google_reconnect", permanent=True)
    token = token_request({"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]})
    renewed = grant_from(token, email=grant.get("email", ""), refresh_token=grant["refresh_token"])
    return renewed["access_token"], renewed


def userinfo(access_token: str) -> dict:
    """OpenID Connect userinfo ({"sub", "email", "email_verified", "hd"?}); GoogleError otherwise."""
    return _get_json(settings.GOOGLE_USERINFO_URL, access_token)


def send_as_addresses(access_token: str) -> list[str]:
    """The addresses the Gmail user may send as (their aliases), lower case; Gmail API users.settings.sendAs.list
    (https://developers.google.com/gmail/api/reference/rest/v1/users.settings.sendAs/list)."""
    body = _get_json(f"{settings.GOOGLE_GMAIL_URL}/gmail/v1/users/me/settings/sendAs", access_token)
    return [str(entry.get("sendAsEmail", "")).lower() for entry in body.get("sendAs") or []
            if isinstance(entry, dict) and entry.get("sendAsEmail")]


def _get_json(url: str, access_token: str) -> dict:
    response = _call("GET", url, headers={"Authorization": f"Bearer {access_token}"})
    if response.status_code == 401:
        raise GoogleError("google_reconnect", permanent=True)
    if response.status_code != 200:
        raise GoogleError("google_unreachable" if response.status_code >= 500 or response.status_code == 429
                          else "google_protocol", permanent=False)
    return _json_object(response)


# Google's answers here are small JSON documents. Like every answer from a provider's host (issue 10), they are
# read with a byte cap (after decompression: a gzip bomb stops at it) and a time cap for the whole request.
MAX_RESPONSE_BYTES = 1024 * 1024
MAX_RESPONSE_SECONDS_FACTOR = 4  # the whole request may take this many GOOGLE_TIMEOUTs (each bounds one wait)


def _call(method: str, url: str, **kwargs) -> requests.Response:
    """One request to Google, its body read under the caps. GoogleError: google_unreachable (network, too slow)
    or google_protocol (an answer over MAX_RESPONSE_BYTES)."""
    session = requests.Session()
    adapter = http_caps.WatchedAdapter()  # connections the deadline can shut down
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    try:
        with http_caps.deadline(settings.GOOGLE_TIMEOUT * MAX_RESPONSE_SECONDS_FACTOR):
            response = session.request(method, url, timeout=settings.GOOGLE_TIMEOUT, verify=_verify(),
                                       allow_redirects=False, stream=True, **kwargs)
            http_caps.read_body(response, max_bytes=MAX_RESPONSE_BYTES)
    except http_caps.TooLarge:
        raise GoogleError("google_protocol", permanent=False) from None
    except (http_caps.TooSlow, requests.RequestException):
        raise GoogleError("google_unreachable", permanent=False) from None
    finally:
        session.close()
    return response


def _json_object(response: requests.Response) -> dict:
    """The answer's JSON object; GoogleError google_protocol when it is not one."""
    try:
        body = response.json()
    except ValueError:
        raise GoogleError("google_protocol", permanent=False) from None
    if not isinstance(body, dict):
        raise GoogleError("google_protocol", permanent=False)
    return body
