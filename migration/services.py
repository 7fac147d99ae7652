"""The writers of a migration: the transition service and the use cases on top.

Views, admin actions, commands and tasks call these; nothing else writes
Migration.status.
"""

import logging
from dataclasses import asdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from migration.models import ACTIVE_STATUSES, WORKER_STATUSES, Migration, MigrationEvent, Status
from migration.selectors import current_campaign
from sync import crypto, queue
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
    with its secret, and sweep_stuck_migrations queues it again after a back-off (attempt_failed). After
    MIGRATION_STEP_ATTEMPTS attempts of the step it fails with RETRIES_EXHAUSTED instead."""


# The codes of a migration that gave up (migration.errors has their texts): a step that kept
# raising something no one expected, and a step that kept meeting transient errors.
INTERNAL_ERROR = "internal_error"
RETRIES_EXHAUSTED = "retries_exhausted"


def defer(migration: Migration, *, code: str) -> None:
    """Keep the migration in its step, note why it waits (error_code), and end this task run (RetryLater).

    The task runner (steps.run_migration) counts the attempt: the sweeper queues the
    step again after a back-off, at most MIGRATION_STEP_ATTEMPTS times in all.
    """
    Migration.objects.filter(pk=migration.pk, status=migration.status).update(error_code=code,
                                                                              updated_at=timezone.now())
    raise RetryLater(code)


def retry_delay(attempts: int) -> timedelta:
    """The back-off after the `attempts`-th failed attempt of a step (1, 2, ...): MIGRATION_RETRY_SECONDS,
    doubling with every attempt, at most MIGRATION_RETRY_MAX_SECONDS."""
    seconds = settings.MIGRATION_RETRY_SECONDS * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, settings.MIGRATION_RETRY_MAX_SECONDS))


def begin_attempt(migration: Migration) -> bool:
    """A worker is about to run the migration's current step: count the attempt (compare-and-swap).

    False when this run must not go ahead, and then it changes nothing else
    unless the attempts are used up:
    - the back-off of the last failed attempt has not passed (a duplicate or
      early delivery; the sweeper queues the step once retry_at is reached);
    - MIGRATION_STEP_ATTEMPTS attempts were made already and the last one never
      reported back (its worker died each time): the migration fails with
      INTERNAL_ERROR, which clears its secret;
    - another run of the task counted an attempt at the same moment.
    On True, migration.step_attempts is the number of this attempt (1, 2, ...).
    """
    now = timezone.now()
    if migration.retry_at is not None and migration.retry_at > now:
        return False
    attempts = migration.step_attempts
    if attempts >= settings.MIGRATION_STEP_ATTEMPTS:
        give_up(migration, code=INTERNAL_ERROR, detail=f"{attempts} attempts without a result (worker lost)")
        return False
    changed = Migration.objects.filter(pk=migration.pk, status=migration.status, step_attempts=attempts).update(
        step_attempts=attempts + 1, retry_at=None, updated_at=now
    )
    if changed:
        migration.step_attempts, migration.retry_at = attempts + 1, None
    return bool(changed)


def attempt_failed(migration: Migration, *, detail: str, unexpected: bool) -> None:
    """The attempt begin_attempt counted ended in its step: wait a back-off, or give up after the last one.

    unexpected: the step raised an exception nobody expected (a bug, a server
    answer no one foresaw): the migration waits with INTERNAL_ERROR (the page says
    the portal tries again) and fails with it. Otherwise the step deferred with a
    transient code (defer), which stays while it waits; it fails with
    RETRIES_EXHAUSTED. detail: for the event support reads; never a secret.
    """
    attempts = migration.step_attempts
    if attempts >= settings.MIGRATION_STEP_ATTEMPTS:
        give_up(migration, code=INTERNAL_ERROR if unexpected else RETRIES_EXHAUSTED,
                detail=f"{attempts} attempts: {detail}")
        return
    now = timezone.now()
    fields = {"retry_at": now + retry_delay(attempts), "updated_at": now}
    if unexpected:
        fields["error_code"] = INTERNAL_ERROR
    Migration.objects.filter(pk=migration.pk, status=migration.status, step_attempts=attempts).update(**fields)


def give_up(migration: Migration, *, code: str, detail: str) -> None:
    """Fail the migration after its step's last attempt (clears the secret); nothing if it moved on meanwhile."""
    try:
        transition(migration, to=Status.FAILED, reason=f"{migration.status}: gave up after {detail}"[:300],
                   error_code=code)
    except TransitionConflict:
        return
    logger.error("migration %s failed with %s: gave up after %s", migration.pk, code, detail)


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
    # Every step starts with fresh attempts and no back-off.
    fields.setdefault("step_attempts", 0)
    fields.setdefault("retry_at", None)
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
    """Queue the worker after the commit: a task must never see an uncommitted row.

    A broker that cannot be reached is logged, never raised (sync.queue.publish_on_commit):
    the row is committed, so the request that made it succeeded, and
    sweep_stuck_migrations queues a migration that sits in a worker step.
    """
    from migration.tasks import run_migration

    queue.publish_on_commit(lambda: run_migration.delay(migration_id), what=f"migration {migration_id}")


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
def submit_credentials(*, migration: Migration, connection: dict, password: str, actor: str,
                       not_before: datetime | None = None) -> Migration:
    """Keep what the user entered (password encrypted) and let the worker verify it.

    connection holds no secret: IMAP host/port/security/username, or the EWS
    URL, user name, sign-in method and the (public) CA certificate.
    not_before: the destination's attempt budget is used up until then
    (sync.attempt_queue.reserve_attempt): the migration waits in "verifying"
    with retry_at set and the sweeper queues it once that time has come.
    """
    if migration.status != Status.AWAITING_USER:
        raise MigrationError("wrong_state")
    # provider_kind is written with the connection: if the user picked another
    # provider in a second tab meanwhile, the form they submitted still wins.
    migration = transition(
        migration, to=Status.VERIFYING, reason="credentials entered", actor=actor, connection=connection,
        provider_kind=migration.provider_kind, secret_encrypted=crypto.encrypt_json({"password": password}),
        error_code="", retry_at=not_before,
    )
    if not_before is None:
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
            if actor.startswith("staff:"):
                # Support started it again: the user hears why it moves, and where to continue.
                from migration import retry_mail

                retry_mail.enqueue_on_commit(migration.pk, migration.attempts)
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
    """Re-queue migrations in a worker step whose back-off has passed, or that sat there too long.

    Too long: MIGRATION_STUCK_SECONDS without a heartbeat (a killed worker, a
    task the broker lost or never got). A migration waiting out a back-off
    (retry_at, after a failed attempt) is queued when it ends, not before.
    Touching updated_at (and clearing retry_at) by compare-and-swap makes sure
    two sweepers, also of two beats, do not both re-queue the same migration,
    and a stuck one is re-queued at most once per period. The runner counts
    every attempt (begin_attempt), so this re-queues a step a bounded number
    of times.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.MIGRATION_STUCK_SECONDS)
    due = Q(retry_at__isnull=True, updated_at__lt=cutoff) | Q(retry_at__lte=now)
    requeued = []
    for pk, status, updated_at in Migration.objects.filter(
        due, status__in=WORKER_STATUSES
    ).values_list("pk", "status", "updated_at"):
        with transaction.atomic():
            claimed = Migration.objects.filter(pk=pk, status=status, updated_at=updated_at).update(
                updated_at=timezone.now(), retry_at=None
            )
            if claimed:
                enqueue(pk)
                requeued.append(pk)
    if requeued:
        logger.warning("re-queued stuck migrations %s", requeued)
    return requeued


def _actor(user) -> str:
    return f"user:{user.pk}"
