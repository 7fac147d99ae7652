"""Signing in with Microsoft: the use cases around the browser redirect, and
the worker's verifying step.

The flow dict (state, PKCE verifier, nonce) lives in the user's session,
keyed by its state, with what it is for ("m<migration id>" or "a<account
id>" for a re-connect); the callback finds it by the state it brings back.
The code is exchanged by the worker: the callback stores the flow and the
auth response encrypted on the migration (never in task arguments, events or
logs) and moves it to verifying.
"""

import logging
import time
from datetime import timedelta

from django.db import transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from migration import services
from migration.microsoft import client, consent
from migration.microsoft.client import MicrosoftError
from sync.microsoft.graph import Graph
from migration.models import Migration, Status
from sync import crypto
from sync import services as sync_services
from sync.models import MailAccount, ProviderKind

logger = logging.getLogger(__name__)

SESSION_KEY = "microsoft_flows"
MAX_FLOWS = 5  # per session: a few tabs, not an ever-growing session
# A sign-in at Microsoft takes minutes; a PKCE verifier left over from an
# abandoned one should not sit in the session for long.
FLOW_MAX_AGE = 600  # seconds
SIGN_IN_STATUSES = (Status.AWAITING_USER, Status.AWAITING_ADMIN_CONSENT)
# The verifying step's delta round (a check that delta works) covers this much of the past.
DELTA_SKEW = timedelta(minutes=10)


def remember_flow(session, purpose: str, flow: dict) -> None:
    """Keep the flow under its own state.

    Keyed by state, not by purpose: a second tab or a double click on the same
    migration adds a flow instead of replacing the first, whose callback would
    otherwise fail with a state mismatch.
    """
    now = time.time()
    flows = _live_flows(session, now)
    flows[flow["state"]] = {"for": purpose, "at": now,
                            "flow": {k: v for k, v in flow.items() if k != "auth_uri"}}
    session[SESSION_KEY] = dict(list(flows.items())[-MAX_FLOWS:])


def take_flow(session, state: str) -> tuple[str, dict] | None:
    """(purpose, flow) of the flow whose state came back, removed from the session (single use)."""
    flows = _live_flows(session, time.time())
    for key in list(flows):
        if state and constant_time_compare(key, state):
            kept = flows.pop(key)
            session[SESSION_KEY] = flows
            return kept["for"], kept["flow"]
    if len(flows) != len(session.get(SESSION_KEY) or {}):
        session[SESSION_KEY] = flows  # expired ones go
    return None


def _live_flows(session, now: float) -> dict:
    """The session's flows younger than FLOW_MAX_AGE, oldest first."""
    return {
        state: kept for state, kept in (session.get(SESSION_KEY) or {}).items()
        # Entries of another shape (an older version of this module) are dropped too.
        if isinstance(kept, dict) and "for" in kept and now - float(kept.get("at", 0)) < FLOW_MAX_AGE
    }


def begin_migration_sign_in(*, session, migration: Migration) -> str:
    """The Microsoft sign-in URL for this migration (login_hint: the account's address)."""
    # Only on the Microsoft path: a crafted POST must not send an IMAP or Exchange migration there.
    if migration.status not in SIGN_IN_STATUSES or migration.provider_kind != ProviderKind.MICROSOFT:
        raise services.MigrationError("wrong_state")
    flow = client.begin_sign_in(login_hint=migration.account.address,
                                select_account=bool((migration.detected or {}).get("select_account")))
    remember_flow(session, f"m{migration.pk}", flow)
    return flow["auth_uri"]


def begin_reconnect(*, session, account: MailAccount) -> str:
    flow = client.begin_sign_in(login_hint=account.address)
    remember_flow(session, f"a{account.pk}", flow)
    return flow["auth_uri"]


def submit_auth_response(*, migration: Migration, flow: dict, auth_response: dict, actor: str) -> Migration:
    """Microsoft sent the user back with a code: let the worker exchange it."""
    if migration.status not in SIGN_IN_STATUSES:
        raise services.MigrationError("wrong_state")
    secret = crypto.encrypt_json({"flow": flow, "auth_response": auth_response})
    migration = services.transition(
        migration, to=Status.VERIFYING, reason="signed in at Microsoft", actor=actor,
        secret_encrypted=secret, error_code="",
    )
    with transaction.atomic():
        services.enqueue(migration.pk)
    return migration


def identity_matches(address: str, *, claims: dict, me: dict, home_account_id: str = "") -> bool:
    """The signed-in mailbox is the account's, and Microsoft vouches for the address.

    Work and school accounts: the address is the sign-in name, the primary
    address or an alias (proxyAddresses) of the signed-in user, AND the mail
    domain's directory (Microsoft's public OpenID configuration for the
    domain) is the directory the user signed in to (the token's tid). An
    admin of another directory can give a user any `mail` value; only the
    directory that owns the domain can hand out its addresses.

    Personal Microsoft accounts (Outlook.com, Hotmail; tid is the consumers
    directory): /me has no mail (null) and no proxyAddresses; the sign-in
    name, which Microsoft verified, is the address (userPrincipalName,
    preferred_username). A domain that an organisation's directory owns is
    not a personal mailbox, whatever name a personal account was made with.

    claims: the id token's claims (tid, preferred_username, email, upn);
    home_account_id: MSAL's "<oid>.<tid>", for the tid when the claims lack it.
    Raises MicrosoftError("ms_unreachable", permanent=False) when the
    domain's directory cannot be looked up now.
    """
    address = address.strip().lower()
    signed_in_tenant = str(claims.get("tid") or home_account_id.rpartition(".")[2]).strip().lower()
    if "@" not in address or not signed_in_tenant:
        return False
    directory = client.domain_directory(address.rpartition("@")[2])
    if signed_in_tenant in client.PERSONAL_TENANTS:
        names = {str(claims.get("preferred_username") or "").strip().lower(),
                 str(me.get("userPrincipalName") or "").strip().lower()}
        return address in names and (not directory or directory in client.PERSONAL_TENANTS)
    identities = client.signed_in_identities(claims)
    identities.update(str(me.get(k) or "").strip().lower() for k in ("mail", "userPrincipalName"))
    # "SMTP:primary@…", "smtp:alias@…"; other address types (X500:, SIP:) are not mail addresses.
    identities.update(str(proxy)[5:].strip().lower() for proxy in me.get("proxyAddresses") or []
                      if str(proxy).lower().startswith("smtp:"))
    return address in identities - {""} and directory == signed_in_tenant


# --- the worker ---------------------------------------------------------------------

def verify(migration: Migration) -> None:
    """verifying -> handing_over (or awaiting_admin_consent, or failed)."""
    try:
        secret = crypto.decrypt_json(migration.secret_encrypted)
    except crypto.SecretUnreadable:
        services.fail(migration, code="secret_unreadable")
        return
    try:
        if "cache" not in secret:
            secret = _redeem(migration, secret)
            if secret is None:
                return
        token, _ = client.access_token(secret["cache"], home_account_id=secret["home_account_id"])
        graph = Graph(token, mailbox=secret["home_account_id"] or migration.account.address)
        try:
            me = graph.me()
            if not identity_matches(migration.account.address, claims=secret.get("claims", {}), me=me,
                                    home_account_id=secret["home_account_id"]):
                _wrong_account(migration)
                return
            cursors = _cursors(graph)
        finally:
            graph.close()
    except MicrosoftError as error:
        if error.code == "ms_admin_consent":
            # From the token endpoint to the worker: Microsoft's own word that the consent is missing.
            consent.require_admin_consent(migration=migration, reason=str(error), actor="worker", proven=True)
            return
        if not error.permanent:
            # Microsoft down or throttling: the tokens stay, and the sweep tries again; no new sign-in.
            logger.info("migration %s: Microsoft verification must wait: %s", migration.pk, error)
            services.defer(migration, code=error.code)
        logger.info("migration %s: Microsoft verification failed: %s", migration.pk, error)
        services.fail(migration, code=error.code, reason=f"verify: {error}")
        return
    services.transition(migration, to=Status.HANDING_OVER, reason=f"verified, {len(cursors)} folders", cursors=cursors,
                        error_code="")
    consent.record_sign_in(tenant=consent.tenant_of(migration))


def _redeem(migration: Migration, secret: dict) -> dict | None:
    if "flow" not in secret or "auth_response" not in secret:
        services.fail(migration, code="secret_unreadable")
        return None
    result, cache = client.redeem(secret["flow"], secret["auth_response"])
    claims = result.get("id_token_claims") or {}
    accounts = list(cache.search(cache.CredentialType.ACCOUNT))
    redeemed = {
        "cache": cache.serialize(),
        "home_account_id": accounts[0]["home_account_id"] if accounts else "",
        "claims": {k: claims.get(k, "") for k in ("preferred_username", "email", "upn", "tid")},
    }
    # The code is single-use: keep the tokens at once, so a redelivered task
    # continues from here instead of redeeming the code a second time.
    changed = Migration.objects.filter(pk=migration.pk, status=Status.VERIFYING).update(
        secret_encrypted=crypto.encrypt_json(redeemed), updated_at=timezone.now()
    )
    if not changed:
        raise services.TransitionConflict(f"{migration.pk} is no longer verifying")
    return redeemed


def _wrong_account(migration: Migration) -> None:
    # Nothing is kept (a terminal transition clears the secret); the retry
    # asks Microsoft to show the account picker.
    detected = {**(migration.detected or {}), "select_account": True}
    services.transition(migration, to=Status.FAILED, reason="signed in with another identity",
                        error_code="ms_wrong_account", detected=detected)


def _cursors(graph: Graph) -> dict:
    """Per syncable folder (the whole tree, nested ones too), keyed by its path: its id and a delta link.

    The delta round here covers only the last minutes (cheap, and it proves
    that Graph answers delta for every folder before the switch). The first
    sync after the handoff does not start from it: it reads each folder whole
    (v3_synced_at is None), so mail of any date that V2 missed is imported.
    """
    since = timezone.now() - DELTA_SKEW
    cursors = {}
    for folder in graph.folder_tree().folders:
        name = folder.path[:500]
        if name in cursors:
            name = f"{folder.path[:488]} ({folder.id[-8:]})"
        _, delta_link = graph.delta(folder.id, since=since)
        cursors[name] = {"folder_id": folder.id, "delta_link": delta_link, "id_type": "ImmutableId"}
    return cursors


def complete_reconnect(*, account: MailAccount, flow: dict, auth_response: dict) -> None:
    """A V3 account whose grant was revoked signs in again: new tokens, same sync state.

    The exchange happens here, in the request: there is no migration to carry
    the code to a worker, and it is one token request plus /me.
    """
    result, cache = client.redeem(flow, auth_response)
    accounts = list(cache.search(cache.CredentialType.ACCOUNT))
    home_account_id = accounts[0]["home_account_id"] if accounts else ""
    graph = Graph(result["access_token"], mailbox=home_account_id or account.address)
    try:
        me = graph.me()
    finally:
        graph.close()
    if not identity_matches(account.address, claims=result.get("id_token_claims") or {}, me=me,
                            home_account_id=home_account_id):
        raise MicrosoftError("ms_wrong_account", permanent=True)
    sync_services.reconnect_microsoft(account_id=account.pk, cache=cache.serialize(), home_account_id=home_account_id)
