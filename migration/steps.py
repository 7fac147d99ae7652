"""What the worker does for a migration, one idempotent step at a time.

Celery may deliver the task twice, or again after a crash: each step first
claims its work with a compare-and-swap transition, network I/O happens
outside transactions, and a step that finds the work done does nothing.
"""

import logging
import traceback
from pathlib import Path

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from migration import done_mail, handoff, proposal, services
from migration.exchange import flow as exchange_flow
from migration.google import steps as google_steps
from migration.imap import flow as imap_flow
from migration.microsoft import consent
from migration.microsoft import flow as microsoft_flow
from migration.models import Migration, Status
from migration.services import RetryLater, TransitionConflict
from sync import attempt_queue, crypto, egress, queue
from sync.imap.client import ImapSettings, MailboxError
from sync.models import ProviderKind

logger = logging.getLogger(__name__)

# At most this many steps per task run; every step moves the status forward.
MAX_STEPS = 6


def run_migration(migration_id: int) -> str:
    """Run the migration's worker steps until it waits (for the user, a back-off) or ends; return its status.

    Every step run is an attempt (services.begin_attempt), at most
    MIGRATION_STEP_ATTEMPTS per step. A step that defers (services.RetryLater)
    or raises an exception nobody expected ends this task run: the sweeper
    queues the step again after a back-off, and after the last attempt the
    migration fails (services.attempt_failed). Unexpected exceptions are logged
    by type and code location only: their message may quote a server answer or
    a secret. Nothing is raised to Celery, whose failure log would print it.
    """
    for _ in range(MAX_STEPS):
        migration = Migration.objects.select_related("account").filter(pk=migration_id).first()
        if migration is None:
            return "gone"
        step = STEPS.get(migration.status)
        if step is None:
            return migration.status  # waits for the user, or finished
        if not services.begin_attempt(migration):
            return Migration.objects.get(pk=migration_id).status  # waiting, given up, or another run has it
        status = migration.status
        try:
            step(migration)
        except TransitionConflict:
            # Another delivery of this task moved the migration on; look again.
            continue
        except RetryLater as waiting:
            logger.info("migration %s waits in %s (attempt %d of %d): %s", migration_id, status,
                        migration.step_attempts, settings.MIGRATION_STEP_ATTEMPTS, waiting)
            _attempt_failed(migration_id, status, detail=f"waited for {waiting}", unexpected=False)
            return Migration.objects.get(pk=migration_id).status
        except Exception as error:  # noqa: BLE001 - bounded: counted, backed off, failed after the last attempt
            where = _where(error)
            logger.error("migration %s: step %s failed unexpectedly (attempt %d of %d): %s at %s", migration_id,
                         status, migration.step_attempts, settings.MIGRATION_STEP_ATTEMPTS, type(error).__name__,
                         where)
            _attempt_failed(migration_id, status, detail=f"{type(error).__name__} at {where}", unexpected=True)
            return Migration.objects.get(pk=migration_id).status
    return Migration.objects.get(pk=migration_id).status


def _attempt_failed(migration_id: int, status: str, *, detail: str, unexpected: bool) -> None:
    # Read again: the step may have moved the migration on before it failed (then there is nothing to count).
    current = Migration.objects.filter(pk=migration_id, status=status).first()
    if current is not None:
        services.attempt_failed(current, detail=detail, unexpected=unexpected)


def _where(error: BaseException) -> str:
    """Where an exception was raised, as `file:line function` of its innermost frames: no message, no values."""
    frames = traceback.extract_tb(error.__traceback__)[-3:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


def _pending(migration: Migration) -> None:
    services.transition(migration, to=Status.DETECTING, reason="worker picked up")


def _detecting(migration: Migration) -> None:
    # DNS and, if enabled, HTTP lookups: outside any transaction, like all network I/O here.
    kind, detected = proposal.initial(migration.account)
    if kind == ProviderKind.MICROSOFT:
        detected["tenant"] = consent.tenant_of(migration)
    services.transition(migration, to=Status.AWAITING_USER, reason=f"provider {detected['provider']} ({kind})",
                        detected=detected, provider_kind=kind)


@sensitive_variables("password")
def _verifying(migration: Migration) -> None:
    if migration.provider_kind == ProviderKind.MICROSOFT:
        microsoft_flow.verify(migration)
        return
    if migration.provider_kind == ProviderKind.GOOGLE:
        google_steps.verify(migration, heartbeat=lambda: services.heartbeat(migration))
        return
    try:
        password = crypto.decrypt_json(migration.secret_encrypted)["password"]
    except (crypto.SecretUnreadable, KeyError):
        services.fail(migration, code="secret_unreadable")
        return
    connection = migration.connection
    # A big mailbox takes longer than MIGRATION_STUCK_SECONDS to walk: the
    # heartbeat keeps the sweeper from starting a second, parallel verify.
    heartbeat = lambda: services.heartbeat(migration)  # noqa: E731
    try:
        if migration.provider_kind == ProviderKind.EXCHANGE:
            connection, cursors = exchange_flow.verify(connection, migration.account.address, password,
                                                       heartbeat=heartbeat)
        else:
            server = ImapSettings(connection["host"], int(connection["port"]), connection["security"],
                                  connection["username"])
            cursors = imap_flow.verify(server, password, heartbeat=heartbeat)
    except MailboxError as error:
        code = exchange_flow.error_code(error.code) if migration.provider_kind == ProviderKind.EXCHANGE else error.code
        if migration.provider_kind == ProviderKind.EXCHANGE and not error.permanent:
            # Busy beyond the retry budget, slow, reset or a 5xx: the migration keeps its password and
            # waits in verifying; the sweeper runs this step again (as for Microsoft's outages).
            logger.info("migration %s: Exchange verification must wait: %s", migration.pk, error.code)
            services.defer(migration, code=code)
        services.fail(migration, code=code, reason=f"verify: {error.code}")
        return
    # The server accepted the password: its attempt leaves the destination's budget for failures.
    attempt_queue.refund(*egress.destination(url=connection.get("ews_url", ""), host=connection.get("host", ""),
                                             port=connection.get("port")))
    services.transition(
        migration, to=Status.HANDING_OVER, reason=f"verified, {len(cursors)} folders", cursors=cursors,
        connection=connection, error_code="",
    )


def _handing_over(migration: Migration) -> None:
    switched = handoff.hand_over(migration)
    services.transition(migration, to=Status.DONE, reason="switched to V3" if switched else "already on V3")
    done_mail.enqueue_on_commit(migration.pk)  # "your account now syncs through V3"
    # The first V3 sync right away: mail keeps flowing without waiting for beat
    # (whose fan-out queues it anyway if the broker is down now).
    queue.enqueue_sync_on_commit(migration.account_id)


STEPS = {
    Status.PENDING: _pending,
    Status.DETECTING: _detecting,
    Status.VERIFYING: _verifying,
    Status.HANDING_OVER: _handing_over,
}
