"""The writers of a migration: the transition service and the use cases on top.

Views, admin actions, commands and tasks call these; nothing else writes
Migration.status.
"""

import logging
from dataclasses import asdict
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from migration.models import ACTIVE_STATUSES, WORKER_STATUSES, Migration, MigrationEvent, Status
from migration.selectors import current_campaign
from sync import crypto
from sync.imap.client import ImapSettings
from sync.models import Engine, MailAccount

logger = logging.getLogger(__name__)

ALLOWED = {
    Status.PENDING: {Status.DETECTING, Status.FAILED, Status.CANCELLED},
    Status.DETECTING: {Status.AWAITING_USER, Status.FAILED, Status.CANCELLED},
    Status.AWAITING_USER: {Status.VERIFYING, Status.AWAITING_ADMIN_CONSENT, Status.FAILED, Status.CANCELLED},
    Status.AWAITING_ADMIN_CONSENT: {Status.AWAITING_USER, Status.VERIFYING, Status.FAILED, Status.CANCELLED},
    # awaiting_admin_consent: Microsoft may ask for admin consent only at the code exchange.
    Status.VERIFYING: {Status.HANDING_OVER, Status.AWAITING_ADMIN_CONSENT, Status.FAILED, Status.CANCELLED},
    Status.HANDING_OVER: {Status.DONE, Status.FAILED},
    Status.FAILED: {Status.PENDING, Status.AWAITING_USER, Status.CANCELLED},
    Status.DONE: set(),
    Status.CANCELLED: set(),
}
TERMINAL = {Status.DONE, Status.FAILED, Status.CANCELLED}


class TransitionConflict(Exception):
    """The migration was not in the expected state (someone else moved it)."""


class RetryLater(Exception):
    """A worker step met a transient error (a service down or throttling): the migration stays in its step,
    with its secret, and sweep_stuck_migrations queues it again after MIGRATION_STUCK_SECONDS."""


def defer(migration: Migration, *, code: str) -> None:
    """Keep the migration in its step, note why it waits (error_code), and end this task run (RetryLater)."""
    Migration.objects.filter(pk=migration.pk, status=migration.status).update(error_code=code,
                                                                              updated_at=timezone.now())
    raise RetryLater(code)


class MigrationError(Exception):
    """A use case that cannot go ahead; code is translated by migration.errors / views."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


def transition(migration: Migration, *, to: str, reason: str = "", actor: str = "system", **fields) -> Migration:
    """Compare-and-swap the status and append an event, in one transaction."""
    source = migration.status
    if to not in ALLOWED[source]:
        raise TransitionConflict(f"{source} -> {to} is not allowed")
    now = timezone.now()
    if to in TERMINAL:
        fields.setdefault("finished_at", now)
        # A finished migration keeps no credentials.
        fields.setdefault("secret_encrypted", "")
    with transaction.atomic():
        changed = Migration.objects.filter(pk=migration.pk, status=source).update(status=to, updated_at=now, **fields)
        if not changed:
            raise TransitionConflict(f"{migration.pk} is no longer {source}")
        MigrationEvent.objects.create(
            migration_id=migration.pk, from_status=source, to_status=to, reason=reason[:300], actor=actor[:150]
        )
    migration.refresh_from_db()
    logger.info("migration %s: %s -> %s (%s)", migration.pk, source, to, reason)
    return migration


def enqueue(migration_id: int) -> None:
    """Queue the worker after the commit: a task must never see an uncommitted row."""
    from migration.tasks import run_migration

    transaction.on_commit(lambda: run_migration.delay(migration_id))


def start_migration(*, user, account: MailAccount) -> Migration:
    """Create the account's migration, or return the one already running."""
    if account.owner_id != user.pk:
        raise MigrationError("not_found")
    if account.engine != Engine.V2:
        raise MigrationError("already_v3")
    try:
        with transaction.atomic():
            migration = Migration.objects.create(
                account=account, user=user, campaign=current_campaign(), provider_kind=account.provider_kind
            )
            MigrationEvent.objects.create(migration=migration, to_status=Status.PENDING, reason="started", actor=_actor(user))
            enqueue(migration.pk)
    except IntegrityError:
        # A second click or another tab won the race: show that migration.
        return Migration.objects.get(account=account, status__in=ACTIVE_STATUSES)
    return migration


@sensitive_variables("password")
def submit_imap_credentials(*, migration: Migration, server: ImapSettings, password: str, actor: str) -> Migration:
    return submit_credentials(migration=migration, connection=asdict(server), password=password, actor=actor)


@sensitive_variables("password")
def submit_credentials(*, migration: Migration, connection: dict, password: str, actor: str) -> Migration:
    """Keep what the user entered (password encrypted) and let the worker verify it.

    connection holds no secret: IMAP host/port/security/username, or the EWS
    URL, user name, sign-in method and the (public) CA certificate.
    """
    if migration.status != Status.AWAITING_USER:
        raise MigrationError("wrong_state")
    # provider_kind is written with the connection: if the user picked another
    # provider in a second tab meanwhile, the form they submitted still wins.
    migration = transition(
        migration, to=Status.VERIFYING, reason="credentials entered", actor=actor, connection=connection,
        provider_kind=migration.provider_kind, secret_encrypted=crypto.encrypt_json({"password": password}),
        error_code="",
    )
    with transaction.atomic():
        enqueue(migration.pk)
    return migration


def retry_migration(*, migration: Migration, actor: str, redetect: bool = False) -> Migration:
    """A failed migration starts over: at the login form, or (staff) from detection."""
    if migration.status != Status.FAILED:
        raise MigrationError("wrong_state")
    if Migration.objects.filter(account=migration.account, status__in=ACTIVE_STATUSES).exists():
        raise MigrationError("already_running")
    if migration.account.engine != Engine.V2:
        raise MigrationError("already_v3")
    target = Status.PENDING if redetect or not migration.detected else Status.AWAITING_USER
    try:
        with transaction.atomic():
            migration = transition(
                migration, to=target, reason="retry", actor=actor, error_code="", finished_at=None,
                attempts=migration.attempts + 1,
            )
            if target == Status.PENDING:
                enqueue(migration.pk)
    except IntegrityError:
        raise MigrationError("already_running") from None
    return migration


def cancel_migration(*, migration: Migration, actor: str, reason: str = "cancelled") -> Migration:
    if Status.CANCELLED not in ALLOWED[migration.status]:
        raise MigrationError("wrong_state")
    return transition(migration, to=Status.CANCELLED, reason=reason, actor=actor)


def fail(migration: Migration, *, code: str, reason: str = "") -> Migration:
    return transition(migration, to=Status.FAILED, reason=reason or code, error_code=code)


def heartbeat(migration: Migration) -> None:
    """A worker step that takes long says it is alive (see sweep_stuck_migrations)."""
    Migration.objects.filter(pk=migration.pk, status=migration.status).update(updated_at=timezone.now())


def sweep_stuck_migrations() -> list[int]:
    """Re-queue migrations that sat in a worker step too long (a killed worker).

    Touching updated_at by compare-and-swap makes sure two sweepers do not
    both re-queue the same migration, and a stuck one is re-queued at most
    once per period.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.MIGRATION_STUCK_SECONDS)
    requeued = []
    for pk, status, updated_at in Migration.objects.filter(
        status__in=WORKER_STATUSES, updated_at__lt=cutoff
    ).values_list("pk", "status", "updated_at"):
        with transaction.atomic():
            claimed = Migration.objects.filter(pk=pk, status=status, updated_at=updated_at).update(
                updated_at=timezone.now()
            )
            if claimed:
                enqueue(pk)
                requeued.append(pk)
    if requeued:
        logger.warning("re-queued stuck migrations %s", requeued)
    return requeued


def _actor(user) -> str:
    return f"user:{user.pk}"
