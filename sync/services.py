"""Writes of the mail side: storing messages, credentials and sync results."""

import logging

from django.core.cache import cache
from django.db import DatabaseError, connection, transaction
from django.db.models.constants import OnConflict
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from sync import crypto, identity, notifications, queue
from sync.identity import FetchedMessage
from sync.imap.client import ImapSettings
from sync.models import AccountStatus, MailAccount, SkippedMessage, SyncedMessage

logger = logging.getLogger(__name__)


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
    runs; the count is what the INSERT returned (insert_new), so rows that
    lost that race are not reported as added. The same message from a source that lacks its
    Message-ID (or has it where another lacked it) is recognised by its
    fingerprint. Per batch two lookups and one INSERT.
    """
    if not messages:
        return 0
    candidates = {key for m in messages for key in _keys_to_look_up(m)}
    known = dict(
        SyncedMessage.objects.filter(account=account, dedup_key__in=candidates).values_list("dedup_key", "fingerprint")
    )
    # A message without its Message-ID here, stored with it by another source: found by its fingerprint.
    id_less = {m.fingerprint for m in messages if m.dedup_key.startswith(identity.FALLBACK_PREFIX)}
    stored_fingerprints = set(
        SyncedMessage.objects.filter(account=account, fingerprint__in=id_less).values_list("fingerprint", flat=True)
    ) if id_less else set()
    fresh: dict[str, FetchedMessage] = {}
    for message in messages:
        key = message.dedup_key
        if key.startswith(identity.FALLBACK_PREFIX):
            if _legacy_key(message) in known or message.fingerprint in stored_fingerprints:
                continue  # stored before dates were recorded (sync 0004), or stored with its Message-ID
        elif message.fallback_key in known:
            continue  # stored without its Message-ID by another source (a V2 export, a provider)
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
    try:
        with transaction.atomic():
            return insert_new(rows)
    except DatabaseError:
        # One row the database refuses must not cost the batch: row by row, and record the refused ones.
        return _store_one_by_one(account=account, folder=folder, rows=rows)


def insert_new(rows: list[SyncedMessage]) -> int:
    """INSERT the rows, skipping those whose (account, dedup_key) is stored; return how many were inserted.

    `INSERT ... ON CONFLICT DO NOTHING RETURNING id` answers with the inserted
    rows only, so the count is right also when an overlapping run stored the
    same messages a moment earlier (a count before and after would include its
    rows; bulk_create(ignore_conflicts=True) returns every row given).
    Django's bulk_create asks for RETURNING only without ignore_conflicts, so
    this calls the query method it is built on (QuerySet._insert, stable
    since Django 1.x). Raises DatabaseError for a row the database refuses.
    """
    if not rows:
        return 0
    fields = [field for field in SyncedMessage._meta.concrete_fields if not field.primary_key]
    size = max(connection.ops.bulk_batch_size(fields, rows), 1)
    inserted = 0
    for start in range(0, len(rows), size):
        returned = SyncedMessage.objects._insert(
            rows[start : start + size], fields=fields, on_conflict=OnConflict.IGNORE,
            returning_fields=[SyncedMessage._meta.pk],
        )
        inserted += len(returned or [])
    return inserted


def _keys_to_look_up(message: FetchedMessage) -> tuple[str, ...]:
    keys = (message.dedup_key, identity.collision_key(message.dedup_key, message.fingerprint))
    if message.dedup_key.startswith(identity.FALLBACK_PREFIX):
        return keys + (_legacy_key(message),)
    return keys + (message.fallback_key,)


def _legacy_key(message: FetchedMessage) -> str:
    return identity.legacy_key(received_at=message.received_at, sender=message.sender, subject=message.subject)


def _store_one_by_one(*, account: MailAccount, folder: str, rows: list[SyncedMessage]) -> int:
    inserted = 0
    for row in rows:
        try:
            with transaction.atomic():
                inserted += insert_new([row])
        except DatabaseError as error:
            reference = row.provider_id or (f"uid:{row.provider_uid}" if row.provider_uid else row.dedup_key)
            record_skipped(account_id=account.pk, folder=folder, reference=reference, reason="store_failed",
                           detail=type(error).__name__)
    return inserted


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
    _enter_reconnect(MailAccount.objects.filter(pk=account_id, token_cache_encrypted=expected), "ms_reconnect")


def _enter_reconnect(accounts, error_code: str) -> None:
    """Put the account into "Neu verbinden" (never a stopped one); the one caller that moves it there
    (compare-and-swap on the status) queues the e-mail to its owner, so the user gets one mail, not one per run."""
    entered = list(accounts.exclude(status__in=[AccountStatus.STOPPED, AccountStatus.RECONNECT]).values_list(
        "pk", flat=True))
    with transaction.atomic():
        moved = accounts.filter(pk__in=entered).exclude(
            status__in=[AccountStatus.STOPPED, AccountStatus.RECONNECT]).update(
            status=AccountStatus.RECONNECT, last_sync_error=error_code, reconnect_since=timezone.now())
        if moved:
            transaction.on_commit(lambda: [notifications.enqueue_reconnect_mail(pk) for pk in entered])
    # Already waiting: only the reason is brought up to date.
    accounts.filter(status=AccountStatus.RECONNECT).update(last_sync_error=error_code)


def enter_reconnect(accounts, error_code: str) -> None:
    """Put the accounts of the queryset into "Neu verbinden" with error_code (one mail to each owner)."""
    _enter_reconnect(accounts, error_code)


def reconnect_microsoft(*, account_id: int, cache: str, home_account_id: str) -> None:
    with transaction.atomic():
        account = MailAccount.objects.select_for_update().get(pk=account_id)
        set_microsoft_tokens(account=account, cache=cache, home_account_id=home_account_id)
        account.status = AccountStatus.ACTIVE
        account.last_sync_error = ""
        account.save(update_fields=["token_cache_encrypted", "status", "last_sync_error"])
        queue.enqueue_sync_on_commit(account_id)


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
        _enter_reconnect(MailAccount.objects.filter(pk=account_id), error_code)
        return
    record_sync_result(account_id=account_id, error_code=error_code)


# What decides where the stored secret is sent: the mailbox's address (the default user name),
# the protocol, the server and how the client trusts it.
CONNECTION_FIELDS = ("address", "provider_kind", "imap_host", "imap_port", "imap_security", "username",
                     "ews_url", "ews_auth_type", "tls_ca_pem")


def save_account_settings(*, account: MailAccount, actor: str) -> list[str]:
    """Save settings someone edited on an existing account (support staff in the admin, a tool).

    If any of CONNECTION_FIELDS differs from the stored row, the stored
    password and Microsoft token cache are deleted in the same UPDATE, so no
    later sync or message fetch can send the old secret to a new host; a V3
    account then waits in "Neu verbinden" for its owner (last_sync_error
    "server_changed"), a V2 account records the same error until it is
    migrated. Returns the names of the changed connection fields ([] if none).
    The caller must not save the account itself afterwards.
    """
    with transaction.atomic():
        stored = MailAccount.objects.select_for_update().get(pk=account.pk)
        changed = [name for name in CONNECTION_FIELDS if getattr(stored, name) != getattr(account, name)]
        # The secrets are never form fields: the stored ones are authoritative (a stale instance must not
        # bring back a secret the user replaced or that was just cleared).
        account.secret_encrypted = stored.secret_encrypted
        account.token_cache_encrypted = stored.token_cache_encrypted
        if changed and (stored.secret_encrypted or stored.token_cache_encrypted):
            account.secret_encrypted = ""
            account.token_cache_encrypted = ""
            if account.status != AccountStatus.STOPPED:
                account.status = AccountStatus.RECONNECT if account.engine == "v3" else AccountStatus.ERROR
                if account.status == AccountStatus.RECONNECT and stored.status != AccountStatus.RECONNECT:
                    account.reconnect_since = timezone.now()
            account.last_sync_error = SERVER_CHANGED
            logger.warning("account %s: %s changed connection settings (%s); stored credentials deleted",
                           account.pk, actor, ", ".join(changed))
        account.save()
    return changed


SERVER_CHANGED = "server_changed"


@sensitive_variables("password")
def replace_password(*, account_id: int, password: str) -> None:
    """The user entered a new mailbox password for a V3 account; the next sync (queued now) checks it."""
    with transaction.atomic():
        MailAccount.objects.filter(pk=account_id).update(
            secret_encrypted=crypto.encrypt_json({"password": password}), status=AccountStatus.ACTIVE,
            last_sync_error="",
        )
        queue.enqueue_sync_on_commit(account_id)
