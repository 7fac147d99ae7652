"""Writes of the mail side: storing messages, credentials and sync results."""

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from sync import crypto
from sync.imap import FetchedMessage, ImapSettings
from sync.models import AccountStatus, MailAccount, SyncedMessage


def banner_cache_key(user_id: int) -> str:
    return f"banner:v2-accounts:{user_id}"


def invalidate_banner(user_id: int) -> None:
    """Drop the cached banner data after the transaction commits."""
    transaction.on_commit(lambda: cache.delete(banner_cache_key(user_id)))


def store_messages(*, account: MailAccount, folder: str, messages: list[FetchedMessage], engine: str) -> int:
    """Insert messages that the account does not have yet; return how many.

    The unique (account, dedup_key) constraint is the final guard: two engines
    or two overlapping runs can offer the same message, only one row lands.
    """
    if not messages:
        return 0
    keys = {message.dedup_key for message in messages}
    known = set(
        SyncedMessage.objects.filter(account=account, dedup_key__in=keys).values_list("dedup_key", flat=True)
    )
    fresh = {}
    for message in messages:
        if message.dedup_key not in known:
            fresh.setdefault(message.dedup_key, message)
    rows = [
        SyncedMessage(
            account=account, dedup_key=m.dedup_key, message_id=m.message_id, folder=folder, subject=m.subject,
            sender=m.sender, received_at=m.received_at, size=m.size, provider_uid=m.uid, imported_by=engine,
        )
        for m in fresh.values()
    ]
    SyncedMessage.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


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


def accounts_to_sync() -> list[int]:
    from migration.selectors import current_campaign_dates
    from sync.selectors import accounts_due_for_sync

    v2_running = current_campaign_dates().v2_running(timezone.localdate())
    stop_v2_after_shutdown(v2_running=v2_running)
    return list(accounts_due_for_sync(v2_running=v2_running).values_list("pk", flat=True))


def sync_account(account_id: int) -> int:
    """One sync run for one account through the engine it is on now."""
    from migration.selectors import current_campaign_dates
    from sync.engines import v2, v3_ews, v3_graph, v3_imap

    account = MailAccount.objects.filter(pk=account_id).first()
    if account is None:
        return 0
    if account.engine == "v3":
        engine = {"imap": v3_imap.sync, "microsoft": v3_graph.sync, "exchange": v3_ews.sync}.get(account.provider_kind)
        if engine is None or account.status in (AccountStatus.STOPPED, AccountStatus.RECONNECT):
            return 0
        return engine(account)
    if account.provider_kind != "imap" or account.status == AccountStatus.STOPPED:
        return 0  # V2 polled IMAP only
    if not current_campaign_dates().v2_running(timezone.localdate()):
        return 0  # V2 is switched off: it never polls again
    return v2.poll(account)
