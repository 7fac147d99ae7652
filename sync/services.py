"""Writes of the mail side: storing messages, credentials and sync results."""

import logging
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from django.views.decorators.debug import sensitive_variables

from sync import crypto
from sync import identity
from sync.identity import FetchedMessage
from sync.imap.client import ImapSettings
from sync.models import AccountStatus, MailAccount, SkippedMessage, SyncedMessage


logger = logging.getLogger(__name__)
# The error code of a run that ended in an exception no engine expected.
UNEXPECTED_ERROR = "sync_internal"


def banner_cache_key(user_id: int) -> str:
    return f"banner:v2-accounts:{user_id}"


def invalidate_banner(user_id: int) -> None:
    """Drop the cached banner data after the transaction commits."""
    transaction.on_commit(lambda: cache.delete(banner_cache_key(user_id)))


def store_messages(*, account: MailAccount, folder: str, messages: list[FetchedMessage], engine: str) -> int:
    """Insert the messages the account does not have yet; return how many rows were inserted.

    Identity by sync.identity: a message whose key is stored with the same
    fingerprint is the same message (from another engine, run or folder) and
    is skipped; one whose Message-ID is stored with another fingerprint is a
    different message reusing the id and gets the collision key. The unique
    (account, dedup_key) constraint is the final guard between overlapping
    runs; the count is taken from the table, so rows that lost that race are
    not reported as added. Three queries per batch.
    """
    if not messages:
        return 0
    candidates = {key for m in messages for key in _keys_to_look_up(m)}
    known = dict(
        SyncedMessage.objects.filter(account=account, dedup_key__in=candidates).values_list("dedup_key", "fingerprint")
    )
    fresh: dict[str, FetchedMessage] = {}
    for message in messages:
        key = message.dedup_key
        if key.startswith(identity.FALLBACK_PREFIX) and identity.undated_key(message.fingerprint) in known:
            continue  # stored without a date (no Date header, or before dates were recorded)
        holder = known.get(key, fresh[key].fingerprint if key in fresh else None)
        if holder is not None and not identity.same_message(holder, message.fingerprint):
            key = identity.collision_key(key, message.fingerprint)
            holder = known.get(key, fresh[key].fingerprint if key in fresh else None)
        if holder is None:
            fresh[key] = message
    if not fresh:
        return 0
    rows = [
        SyncedMessage(
            account=account, dedup_key=key, fingerprint=m.fingerprint, message_id=m.message_id, folder=folder,
            subject=m.subject, sender=m.sender, recipients=m.to, cc=m.cc, sent_at=m.sent_at, received_at=m.received_at,
            size=m.size, provider_uid=m.uid, provider_id=m.provider_id, imported_by=engine,
        )
        for key, m in fresh.items()
    ]
    before = SyncedMessage.objects.filter(account=account, dedup_key__in=fresh.keys()).count()
    try:
        with transaction.atomic():
            SyncedMessage.objects.bulk_create(rows, ignore_conflicts=True)
    except DatabaseError:
        # One row the database refuses must not cost the batch: row by row, and record the refused ones.
        _store_one_by_one(account=account, folder=folder, rows=rows)
    return SyncedMessage.objects.filter(account=account, dedup_key__in=fresh.keys()).count() - before


def _keys_to_look_up(message: FetchedMessage) -> tuple[str, ...]:
    keys = (message.dedup_key, identity.collision_key(message.dedup_key, message.fingerprint))
    if message.dedup_key.startswith(identity.FALLBACK_PREFIX):
        keys += (identity.undated_key(message.fingerprint),)
    return keys


def _store_one_by_one(*, account: MailAccount, folder: str, rows: list[SyncedMessage]) -> None:
    for row in rows:
        try:
            with transaction.atomic():
                SyncedMessage.objects.bulk_create([row], ignore_conflicts=True)
        except DatabaseError as error:
            reference = row.provider_id or (f"uid:{row.provider_uid}" if row.provider_uid else row.dedup_key)
            record_skipped(account_id=account.pk, folder=folder, reference=reference, reason="store_failed",
                           detail=type(error).__name__)


def record_skipped(*, account_id: int, folder: str, reference: str, reason: str, detail: str = "") -> None:
    """Note a message the run could not store (support staff see it in the admin); the run goes on.

    reason: a short code ("unreadable", "too_large", ...); detail: no message
    content and no secrets, only what helps support (an exception's class name).
    """
    SkippedMessage.objects.update_or_create(
        account_id=account_id, folder=folder[:500], reference=reference[:600],
        defaults={"reason": reason[:40], "detail": detail[:300]},
    )


def set_imap_credentials(*, account: MailAccount, server: ImapSettings, password: str) -> None:
    account.imap_host = server.host
    account.imap_port = server.port
    account.imap_security = server.security
    account.username = server.username
    account.secret_encrypted = crypto.encrypt_json({"password": password})


def set_microsoft_tokens(*, account: MailAccount, cache: str, home_account_id: str) -> None:
    """The account's MSAL token cache, encrypted (the caller saves the account)."""
    account.token_cache_encrypted = crypto.encrypt_json({"cache": cache, "home_account_id": home_account_id})


def microsoft_tokens_of(account: MailAccount) -> dict:
    return crypto.decrypt_json(account.token_cache_encrypted)


def save_microsoft_cache(*, account_id: int, cache: str, home_account_id: str, expected: str) -> str:
    """MSAL refreshed a token: keep the new cache (the refresh token may have rotated).

    Compare-and-swap on the ciphertext the sync started from: if the user
    re-connected meanwhile, their fresh grant wins over this run's old one.
    Returns the stored ciphertext, or "" when the swap lost.
    """
    ciphertext = crypto.encrypt_json({"cache": cache, "home_account_id": home_account_id})
    changed = MailAccount.objects.filter(pk=account_id, token_cache_encrypted=expected).update(
        token_cache_encrypted=ciphertext
    )
    return ciphertext if changed else ""


def mark_reconnect(*, account_id: int, expected: str) -> None:
    """The grant was revoked or expired: visible on the settings page, no more sync tries.

    Only for the grant this run used (expected ciphertext): a re-connect that
    happened during the run is not undone.
    """
    MailAccount.objects.filter(pk=account_id, token_cache_encrypted=expected).exclude(
        status=AccountStatus.STOPPED
    ).update(status=AccountStatus.RECONNECT, last_sync_error="ms_reconnect")


def reconnect_microsoft(*, account_id: int, cache: str, home_account_id: str) -> None:
    with transaction.atomic():
        account = MailAccount.objects.select_for_update().get(pk=account_id)
        set_microsoft_tokens(account=account, cache=cache, home_account_id=home_account_id)
        account.status = AccountStatus.ACTIVE
        account.last_sync_error = ""
        account.save(update_fields=["token_cache_encrypted", "status", "last_sync_error"])
        from sync.tasks import sync_account as sync_task

        transaction.on_commit(lambda: sync_task.delay(account_id))


def imap_settings_of(account: MailAccount) -> ImapSettings:
    return ImapSettings(
        host=account.imap_host, port=account.imap_port or 993, security=account.imap_security or "ssl",
        username=account.username or account.address,
    )


def password_of(account: MailAccount) -> str:
    return crypto.decrypt_json(account.secret_encrypted).get("password", "")


def record_sync_result(*, account_id: int, error_code: str = "") -> None:
    fields = {"last_sync_error": error_code}
    if error_code:
        fields["status"] = AccountStatus.ERROR
    else:
        fields.update(status=AccountStatus.ACTIVE, last_sync_at=timezone.now())
    # A stopped account stays stopped; one waiting for a re-connect stays so until the user re-connects.
    MailAccount.objects.filter(pk=account_id).exclude(
        status__in=[AccountStatus.STOPPED, AccountStatus.RECONNECT]
    ).update(**fields)


# Codes that mean "the mailbox refused the stored password" (IMAP's, and Exchange's own wording).
PASSWORD_REFUSED = {"auth_failed", "ews_auth_failed"}


def record_v3_failure(*, account_id: int, error_code: str) -> None:
    """A V3 sync failed. A rejected password stops the syncing until the user enters a new one:
    logging in with it again every interval would lock the account (Active Directory lockout
    policies, providers' brute-force protection)."""
    if error_code in PASSWORD_REFUSED:
        MailAccount.objects.filter(pk=account_id).exclude(status=AccountStatus.STOPPED).update(
            status=AccountStatus.RECONNECT, last_sync_error=error_code
        )
        return
    record_sync_result(account_id=account_id, error_code=error_code)


@sensitive_variables("password")
def replace_password(*, account_id: int, password: str) -> None:
    """The user entered a new mailbox password for a V3 account; the next sync (queued now) checks it."""
    with transaction.atomic():
        MailAccount.objects.filter(pk=account_id).update(
            secret_encrypted=crypto.encrypt_json({"password": password}), status=AccountStatus.ACTIVE,
            last_sync_error="",
        )
        from sync.tasks import sync_account as sync_task

        transaction.on_commit(lambda: sync_task.delay(account_id))


def stop_v2_after_shutdown(*, v2_running: bool) -> int:
    """After the shutdown date V2 accounts are marked stopped: no more V2 polls."""
    if v2_running:
        return 0
    return MailAccount.objects.filter(engine="v2").exclude(status=AccountStatus.STOPPED).update(
        status=AccountStatus.STOPPED
    )


def v2_running() -> bool:
    """Whether V2 still polls today. The shutdown date is the campaign's (staff edit it), read
    through the callable named by settings.SYNC_V2_SHUTDOWN_DATE: the sync outlives the
    campaign and never imports it. Without that setting, settings.CAMPAIGN_V2_SHUTDOWN."""
    source = settings.SYNC_V2_SHUTDOWN_DATE
    shutdown = import_string(source)() if source else settings.CAMPAIGN_V2_SHUTDOWN
    return timezone.localdate() < shutdown


def accounts_to_sync() -> list[int]:
    """The periodic fan-out: claim the accounts due now and queue one sync run each; return their ids.

    At most settings.SYNC_FANOUT_BATCH accounts per call, least recently run
    first; accounts with a run under way or already queued are left out
    (sync.leases). The runs are queued once the claim has committed, each with
    its queued mark so that it clears its own.
    """
    from sync import leases
    from sync.selectors import accounts_due_for_sync
    from sync.tasks import sync_account as sync_task

    running = v2_running()
    stop_v2_after_shutdown(v2_running=running)
    now = timezone.now()
    with transaction.atomic():
        account_ids = leases.mark_queued(
            accounts_due_for_sync(v2_running=running, now=now), now=now, limit=settings.SYNC_FANOUT_BATCH
        )
        transaction.on_commit(lambda: [sync_task.delay(pk, now.isoformat()) for pk in account_ids])
    return account_ids


def sync_account(account_id: int, *, queued_at: datetime | None = None) -> int:
    """One sync run for one account through the engine it is on now; returns new messages.

    queued_at: the datetime of the fan-out's queued mark this run was queued
    with (None for runs queued by anything else); the run clears that mark.
    Only one run per account at a time (sync.leases): a run that finds
    another under way returns 0 at once and records nothing.

    An exception an engine did not expect (a bug, a server answer nobody
    foresaw) is logged and recorded on the account as "sync_internal", which
    the settings page shows; it is not retried at once (it would fail the same
    way), the next scheduled run tries again.
    """
    from sync import leases

    with leases.held(account_id) as held:
        if queued_at is not None:
            # Cleared after the claim: in between the account is leased, so
            # the fan-out cannot queue it a second time.
            leases.clear_queued(account_id, queued_at)
        if not held:
            return 0
        return _run_engine(account_id)


def _run_engine(account_id: int) -> int:
    """sync_account's run, under the account's lease."""
    from sync import v2
    from sync.exchange import engine as v3_ews
    from sync.imap import engine as v3_imap
    from sync.microsoft import engine as v3_graph

    account = MailAccount.objects.filter(pk=account_id).first()
    if account is None:
        return 0
    if account.engine == "v3":
        engine = {"imap": v3_imap.sync, "microsoft": v3_graph.sync, "exchange": v3_ews.sync}.get(account.provider_kind)
        if engine is None or account.status in (AccountStatus.STOPPED, AccountStatus.RECONNECT):
            return 0
    else:
        if account.provider_kind != "imap" or account.status == AccountStatus.STOPPED:
            return 0  # V2 polled IMAP only
        if not v2_running():
            return 0  # V2 is switched off: it never polls again
        engine = v2.poll
    try:
        return engine(account)
    except Exception as error:  # noqa: BLE001 - recorded for support, never silent; see the docstring
        logger.exception("Sync of account %s failed unexpectedly (%s)", account_id, type(error).__name__)
        record_sync_result(account_id=account_id, error_code=UNEXPECTED_ERROR)
        return 0
