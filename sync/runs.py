"""Sync runs: the periodic fan-out and one run of one account through the engine it is on.

Above the engines in the import order (tasks -> runs -> engines -> services):
sync.tasks calls these, the provider engines know nothing of scheduling.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from portal.logsafe import describe
from sync import destinations, leases, queue, schedule, v2
from sync.exchange import engine as v3_ews
from sync.google import engine as v3_google
from sync.imap import engine as v3_imap
from sync.microsoft import engine as v3_graph
from sync.models import AccountStatus, MailAccount
from sync.selectors import accounts_due_for_sync
from sync.services import record_sync_result

logger = logging.getLogger(__name__)
# The error code of a run that ended in an exception no engine expected.
UNEXPECTED_ERROR = "sync_internal"
# The engine module per provider kind; each has sync(account) -> new messages.
V3_ENGINES = {"imap": v3_imap, "microsoft": v3_graph, "exchange": v3_ews, "google": v3_google}


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


# Any constant: the transaction-level advisory lock that lets one fan-out at a time count and claim.
FANOUT_LOCK = 0x5F_13_5C_A1


def accounts_to_sync() -> list[int]:
    """The periodic fan-out: claim the accounts due now and queue one sync run each; return their ids.

    Bounded twice, so that the queue never grows beyond what the workers take,
    whatever the number of accounts: at most settings.SYNC_FANOUT_BATCH
    accounts per call, and never more than settings.SYNC_FANOUT_MAX accounts
    queued or running at once (sync.leases.in_flight), and at most
    settings.SYNC_MAX_PER_DESTINATION of one destination (one mail server,
    one Microsoft 365 organisation, Google: sync.destinations), taken in fair
    turns across destinations; within one, the longest due go first. Accounts
    with a run under way or already queued are left out (sync.leases). On
    PostgreSQL fan-outs take turns (an advisory lock held until the commit),
    so two beats cannot both fill the same free room. The
    runs are queued once the claim has committed, each with its queued mark
    so that it clears its own. A constant number of queries whatever the
    number of accounts: the count per destination, the pick, the lock, one
    UPDATE (and, for accounts an IMAP IDLE listener covers, one query for
    the listeners' heartbeats and one UPDATE: push_poll_later).
    """
    running = v2_running()
    stop_v2_after_shutdown(v2_running=running)
    now = timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [FANOUT_LOCK])
        busy = destinations.in_flight_by_destination(MailAccount.objects.filter(leases.in_flight(now)))
        room = settings.SYNC_FANOUT_MAX - sum(busy.values())
        account_ids = leases.mark_queued(
            accounts_due_for_sync(v2_running=running, now=now), now=now,
            limit=min(settings.SYNC_FANOUT_BATCH, room), busy=busy,
        )
        push_poll_later(account_ids, now=now)
        transaction.on_commit(lambda: [queue.enqueue_sync(pk, queued_at=now) for pk in account_ids])
    return account_ids


def push_poll_later(account_ids: list[int], *, now: datetime) -> int:
    """Of the just claimed accounts, those a live IMAP IDLE listener or Graph subscription covers are due again after
    SYNC_PUSH_POLL_SECONDS instead of the normal interval: push queues their runs when mail
    arrives, the poll only catches what a dropped connection missed. Returns how many.

    One query for the listener heartbeats (sync.imap.idle); one UPDATE when a listener is live or Graph
    notifications are on (MS_GRAPH_NOTIFICATIONS).
    """
    if not account_ids:
        return 0
    covered = schedule.pushed_q(now)
    if covered is None:
        return 0
    later = now + timedelta(seconds=settings.SYNC_PUSH_POLL_SECONDS * leases.DUE_FRACTION)
    return MailAccount.objects.filter(covered, pk__in=account_ids).update(sync_due_at=later)


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

    When the run ends its account's next due time follows what it found
    (sync.schedule: sooner after new mail, later after quiet runs).
    """
    with leases.held(account_id) as held:
        if queued_at is not None:
            # Cleared after the claim: in between the account is leased, so
            # the fan-out cannot queue it a second time.
            leases.clear_queued(account_id, queued_at)
        if not held:
            return 0
        new_messages = _run_engine(account_id)
        schedule.after_run(account_id, new_messages=new_messages)
        return new_messages


def _run_engine(account_id: int) -> int:
    """sync_account's run, under the account's lease."""
    account = MailAccount.objects.filter(pk=account_id).first()
    if account is None:
        return 0
    if account.engine == "v3":
        module = V3_ENGINES.get(account.provider_kind)
        engine = module.sync if module is not None else None
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
        logger.error("Sync of account %s failed unexpectedly (%s)", account_id, describe(error))
        record_sync_result(account_id=account_id, error_code=UNEXPECTED_ERROR)
        return 0
