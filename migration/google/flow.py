"""Signing in with Google: the authorization request and its callback (views: migration.google.views).

OAuth 2.0 for web server applications (https://developers.google.com/identity/protocols/oauth2/web-server)
with PKCE S256 (RFC 7636), login_hint (the account's address), access_type=offline and
prompt=consent (so Google issues a refresh token also to a user who consented before).
The flow (state, PKCE verifier, purpose) lives in the user's session, keyed by its
state and single use; the callback finds it by the state it brings back.

Identity: the Google account that signed in must be the mailbox being migrated: its
verified address, or one of its Gmail "send as" aliases (a Workspace user's alias
domain). gmail.com and googlemail.com are one mailbox.
"""

import base64
import hashlib
import secrets
import time
from urllib.parse import urlencode

from django.conf import settings
from django.utils.crypto import constant_time_compare

from sync.google import oauth
from sync.google.oauth import GoogleError

SESSION_KEY = "google_flows"
MAX_FLOWS = 5
FLOW_MAX_AGE = 600  # seconds: a sign-in at Google takes minutes
# Where a Workspace admin allows the CRM's app (Security → Access and data control → API controls).
ADMIN_HELP_URL = "https://support.google.com/a/answer/7281227"


def begin(*, session, purpose: str, address: str, redirect_uri: str) -> str:
    """The Google authorization URL for purpose ("m<migration id>" or "a<account id>"); the flow goes to session."""
    if not oauth.configured():
        raise GoogleError("google_not_configured", permanent=True)
    state, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    now = time.time()
    flows = _live_flows(session, now)
    flows[state] = {"for": purpose, "at": now, "verifier": verifier, "address": address,
                    "redirect_uri": redirect_uri}
    session[SESSION_KEY] = dict(list(flows.items())[-MAX_FLOWS:])
    query = {
        "client_id": settings.GOOGLE_CLIENT_ID, "redirect_uri": redirect_uri, "response_type": "code",
        "scope": " ".join(oauth.SCOPES), "state": state, "code_challenge": challenge,
        "code_challenge_method": "S256", "login_hint": address, "access_type": "offline", "prompt": "consent",
        "include_granted_scopes": "false",
    }
    return f"{settings.GOOGLE_AUTH_URL}?{urlencode(query)}"


def complete(*, session, params) -> tuple[str, dict]:
    """(purpose, grant) for the callback's query params; GoogleError with a code otherwise.

    Codes: google_state_mismatch (no such flow in this session: forged, replayed or expired),
    google_admin_policy (a Workspace admin restricts the app), google_denied (the user said no),
    google_scope_missing (the user unticked mail access), google_wrong_account, and the token
    endpoint's codes (sync.google.oauth).
    """
    kept = _take(session, params.get("state", ""))
    if kept is None:
        raise GoogleError("google_state_mismatch", permanent=True)
    if params.get("error"):
        raise oauth.error_for(params["error"])
    if not params.get("code"):
        raise GoogleError("google_protocol", permanent=False)
    token = oauth.token_request({"grant_type": "authorization_code", "code": params["code"],
                                 "redirect_uri": kept["redirect_uri"], "code_verifier": kept["verifier"]})
    # Granular consent: the user may untick a scope and still come back with a code.
    if "https://mail.google.com/" not in str(token.get("scope", "")).split():
        raise GoogleError("google_scope_missing", permanent=True)
    if not token.get("refresh_token"):
        raise GoogleError("google_protocol", permanent=False, detail="no refresh token")
    info = oauth.userinfo(token["access_token"])
    email = str(info.get("email", "")).lower()
    if not info.get("email_verified") or not _same_mailbox(email, kept["address"]):
        aliases = oauth.send_as_addresses(token["access_token"]) if info.get("email_verified") else []
        if not any(_same_mailbox(alias, kept["address"]) for alias in aliases):
            raise GoogleError("google_wrong_account", permanent=True)
    return kept["for"], oauth.grant_from(token, email=email)


def forget(*, session, purpose: str) -> None:
    """Drop the pending sign-ins for purpose (the user picked another provider): their answers get the 400 page."""
    flows = session.get(SESSION_KEY) or {}
    kept = {state: flow for state, flow in flows.items() if not (isinstance(flow, dict) and flow.get("for") == purpose)}
    if len(kept) != len(flows):
        session[SESSION_KEY] = kept


def _same_mailbox(a: str, b: str) -> bool:
    return _canonical(a) == _canonical(b)


def _canonical(address: str) -> str:
    local, _at, domain = address.strip().lower().rpartition("@")
    return f"{local}@{'gmail.com' if domain == 'googlemail.com' else domain}"


def _take(session, state: str) -> dict | None:
    flows = _live_flows(session, time.time())
    for key in list(flows):
        if state and constant_time_compare(key, state):
            kept = flows.pop(key)
            session[SESSION_KEY] = flows
            return kept
    session[SESSION_KEY] = flows  # expired ones go
    return None


def _live_flows(session, now: float) -> dict:
    return {state: kept for state, kept in (session.get(SESSION_KEY) or {}).items()
            if isinstance(kept, dict) and now - float(kept.get("at", 0)) < FLOW_MAX_AGE}
