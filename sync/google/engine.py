"""The V3 engine for Google mailboxes: the IMAP engine (sync.imap.engine) logged in with XOAUTH2.

Why IMAP and not the Gmail API: see sync.google.oauth. The folders, cursors,
handoff and exactly-once guarantees are the IMAP engine's; this module only
turns the stored grant into a fresh access token for each run.

The grant lives encrypted in MailAccount.token_cache_encrypted (shape in
sync.google.oauth). A refreshed access token is stored by compare-and-swap on
the ciphertext the run started from, so a re-connect during the run wins.

Errors: invalid_grant (revoked, expired) and admin_policy_enforced (a Workspace
admin restricts the app) put the account into "Neu verbinden" with the code
google_reconnect / google_admin_policy; Google unreachable is recorded as
google_unreachable and the next run tries again.
"""

from django.db import transaction

from sync import crypto, queue
from sync.google import oauth
from sync.google.oauth import GoogleError
from sync.imap import engine as imap_engine
from sync.models import AccountStatus, MailAccount
from sync.services import enter_reconnect, record_sync_result


def grant_of(account: MailAccount) -> dict:
    """The account's Google grant ({} when there is none or it cannot be read)."""
    if not account.token_cache_encrypted:
        return {}
    try:
        grant = crypto.decrypt_json(account.token_cache_encrypted)
    except crypto.SecretUnreadable:
        return {}
    return grant if grant.get("kind") == "google" else {}


def access_token_for(account: MailAccount) -> str:
    """A valid access token for the account, refreshed (and stored) when it expires soon.

    Raises GoogleError; a permanent one (revoked grant, admin policy) has already put the
    account into "Neu verbinden" (only if its grant is still the one this call read).
    """
    started_from = account.token_cache_encrypted
    grant = grant_of(account)
    try:
        access_token, renewed = oauth.fresh_access_token(grant)
    except GoogleError as error:
        if error.permanent:
            code = error.code if error.code == "google_admin_policy" else "google_reconnect"
            enter_reconnect(MailAccount.objects.filter(pk=account.pk, token_cache_encrypted=started_from), code)
        raise
    if renewed is not grant:
        # Compare-and-swap: a re-connect while this ran keeps its own, newer grant.
        MailAccount.objects.filter(pk=account.pk, token_cache_encrypted=started_from).update(
            token_cache_encrypted=crypto.encrypt_json(renewed))
    return access_token


def sync(account: MailAccount) -> int:
    """One V3 run of a Google account; returns the number of new messages (sync.imap.engine.sync)."""
    try:
        access_token = access_token_for(account)
    except GoogleError as error:
        if not error.permanent:
            record_sync_result(account_id=account.pk, error_code=error.code)
        return 0
    added = imap_engine.sync(account, access_token=access_token)
    # Gmail refused a token Google had just issued (revoked in between): the IMAP engine put the
    # account into "Neu verbinden" as for a refused password; the user re-connects with Google.
    MailAccount.objects.filter(pk=account.pk, status=AccountStatus.RECONNECT, last_sync_error="auth_failed").update(
        last_sync_error="google_reconnect")
    return added


def reconnect(*, account_id: int, grant: dict) -> None:
    """The user signed in with Google again: the new grant replaces the old one, the account syncs again."""
    with transaction.atomic():
        account = MailAccount.objects.select_for_update().get(pk=account_id)
        account.token_cache_encrypted = crypto.encrypt_json(grant)
        account.status = AccountStatus.ACTIVE
        account.last_sync_error = ""
        account.save(update_fields=["token_cache_encrypted", "status", "last_sync_error"])
        queue.enqueue_sync_on_commit(account_id)
