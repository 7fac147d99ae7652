"""The adaptive interval: when an account is looked at next, from what its last run found.

A mailbox that just received mail is likely to receive more soon (a
conversation, a working day), a quiet one is not: after a run that stored new
messages the account is due again after SYNC_INTERVAL_MIN_SECONDS; each quiet
run (also a failed one: a server that refuses is not asked more often) doubles
the interval, starting from SYNC_INTERVAL_SECONDS, up to
SYNC_INTERVAL_MAX_SECONDS, the longest an account waits for its next look.
Accounts push covers (a live IMAP IDLE/EWS listener or Graph subscription) go up to SYNC_PUSH_POLL_SECONDS
instead, and new mail does not shorten their interval: push queues their runs
when mail arrives, the poll is only the safety net.

The interval is stored on the account (sync_interval_seconds) and turned into
its next due time (sync_due_at), which the fan-out reads through an index.
"""

from datetime import timedelta

from django.conf import settings
from django.db.models import BooleanField, ExpressionWrapper, Value
from django.utils import timezone

from sync import leases
from sync.imap import idle
from sync.microsoft import subscriptions
from sync.models import MailAccount


def pushed_q(now):
    """A Q on MailAccount for the accounts push covers at `now` (a live IMAP IDLE/EWS listener shard or a
    live Graph subscription), None when nothing is pushed. One query (the listeners' heartbeats); the Graph
    part is a join, only when MS_GRAPH_NOTIFICATIONS is on."""
    covered = idle.pushed_accounts_q(now)
    if subscriptions.enabled():
        graph = subscriptions.pushed_accounts_q(now)
        covered = graph if covered is None else covered | graph
    return covered


def next_interval(current: int | None, *, new_messages: int, pushed: bool) -> int:
    """The interval in seconds after a run that stored `new_messages`; `current`: the stored one
    (None: never set, the base SYNC_INTERVAL_SECONDS). Never above the maximum for the account."""
    longest = settings.SYNC_PUSH_POLL_SECONDS if pushed else settings.SYNC_INTERVAL_MAX_SECONDS
    # Pushed accounts: push queued this run when the mail came; polling sooner would only add
    # a poll a minute after every pushed message.
    if new_messages > 0 and not pushed:
        return min(settings.SYNC_INTERVAL_MIN_SECONDS, longest)
    if current is None:
        return min(settings.CELERY_BEAT_SYNC_SECONDS, longest)
    return min(max(current * 2, settings.SYNC_INTERVAL_MIN_SECONDS), longest)


def after_run(account_id: int, *, new_messages: int) -> int:
    """Store the account's next interval and set its next due time from now; returns the interval.

    Called at the end of a run, under its lease (sync.runs.sync_account).
    Due after DUE_FRACTION of the interval, like the fan-out's own mark
    (sync.leases): a fan-out that ticks a little early still finds it due.
    Three queries: the listeners' heartbeats; the stored interval and whether push covers the
    account; one UPDATE.
    """
    now = timezone.now()
    covered = pushed_q(now)
    # Whether push covers it and its stored interval in one read (this runs after every sync run).
    pushed_expr = Value(False) if covered is None else ExpressionWrapper(covered, output_field=BooleanField())
    current, pushed = MailAccount.objects.filter(pk=account_id).annotate(pushed=pushed_expr).values_list(
        "sync_interval_seconds", "pushed").first() or (None, False)
    interval = next_interval(current, new_messages=new_messages, pushed=pushed)
    MailAccount.objects.filter(pk=account_id).update(
        sync_interval_seconds=interval, sync_due_at=now + timedelta(seconds=interval * leases.DUE_FRACTION)
    )
    return interval
