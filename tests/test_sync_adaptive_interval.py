"""The adaptive interval (sync.schedule): sooner after new mail, later after quiet runs, never beyond the maximum.

The runs are real: V2 polls of a mailbox on the real Dovecot through sync.runs.sync_account.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.devservers import make_message
from portal.heartbeats import record
from sync import leases, schedule
from sync.imap import idle
from sync.models import MailAccount
from sync.runs import accounts_to_sync, sync_account

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def intervals(settings):
    settings.SYNC_INTERVAL_MIN_SECONDS = 60
    settings.CELERY_BEAT_SYNC_SECONDS = 120
    settings.SYNC_INTERVAL_MAX_SECONDS = 900
    settings.SYNC_PUSH_POLL_SECONDS = 1800
    return settings


def due_in(account_id: int) -> float:
    """Seconds from now until the account is due."""
    due = MailAccount.objects.get(pk=account_id).sync_due_at
    return (due - timezone.now()).total_seconds()


@pytest.mark.parametrize("current, new_messages, pushed, expected", [
    (None, 0, False, 120),    # the first quiet run: the base interval
    (120, 0, False, 240),     # then doubling
    (480, 0, False, 900),     # capped at the maximum
    (900, 0, False, 900),
    (900, 3, False, 60),      # new mail: the shortest
    (None, 1, False, 60),
    (60, 0, False, 120),
    (900, 0, True, 1800),     # push covers it: up to the push poll
    (1800, 0, True, 1800),
    (1800, 2, True, 1800),    # push brought the mail: no sooner poll
    (240, 2, True, 480),
    (10, 0, False, 60),       # an interval stored under an older, smaller minimum grows from the minimum
])
def test_the_next_interval(intervals, current, new_messages, pushed, expected):
    assert schedule.next_interval(current, new_messages=new_messages, pushed=pushed) == expected


def test_runs_move_the_due_time_sooner_after_new_mail_and_later_when_quiet(intervals, imap_account, dovecot,
                                                                         mailbox, mail_settings):
    address = mailbox[0]
    dovecot.deliver(address, make_message(subject="Erste"), make_message(subject="Zweite"))
    fraction = leases.DUE_FRACTION

    assert sync_account(imap_account.pk) == 2
    assert 60 * fraction - 5 < due_in(imap_account.pk) <= 60 * fraction

    seen = []
    for _ in range(6):  # quiet runs: 120, 240, 480, 900, 900, 900
        assert sync_account(imap_account.pk) == 0
        seen.append(MailAccount.objects.get(pk=imap_account.pk).sync_interval_seconds)
        assert due_in(imap_account.pk) <= 900 * fraction  # never beyond the maximum
    assert seen == [120, 240, 480, 900, 900, 900]
    assert 900 * fraction - 5 < due_in(imap_account.pk)

    dovecot.deliver(address, make_message(subject="Dritte"))
    assert sync_account(imap_account.pk) == 1
    assert MailAccount.objects.get(pk=imap_account.pk).sync_interval_seconds == 60
    assert due_in(imap_account.pk) <= 60 * fraction


def test_a_failed_run_backs_off_like_a_quiet_one(intervals, imap_account, dovecot, mailbox, mail_settings):
    dovecot.set_password(mailbox[0], "geändert")
    MailAccount.objects.filter(pk=imap_account.pk).update(sync_interval_seconds=240)
    assert sync_account(imap_account.pk) == 0
    account = MailAccount.objects.get(pk=imap_account.pk)
    assert account.last_sync_error == "auth_failed" and account.sync_interval_seconds == 480


def test_the_fan_out_takes_accounts_by_their_own_due_time(intervals, user, make_account, settings):
    busy = make_account(user, "busy@example.com", imap_host="mail.example.com", engine="v3")
    quiet = make_account(user, "quiet@example.com", imap_host="mail.example.com", engine="v3")
    now = timezone.now()
    MailAccount.objects.filter(pk=busy.pk).update(sync_interval_seconds=60, sync_due_at=now - timedelta(seconds=1))
    MailAccount.objects.filter(pk=quiet.pk).update(sync_interval_seconds=900, sync_due_at=now + timedelta(seconds=700))
    assert accounts_to_sync() == [busy.pk]


def test_pushed_accounts_back_off_up_to_the_push_poll(intervals, imap_account, dovecot, mailbox, mail_settings):
    MailAccount.objects.filter(pk=imap_account.pk).update(engine="v3", imap_port=dovecot.tls_port,
                                                          sync_interval_seconds=900)
    record(idle.heartbeat_name(0, 1), count=1)  # a live listener covers every account
    schedule.after_run(imap_account.pk, new_messages=0)
    assert MailAccount.objects.get(pk=imap_account.pk).sync_interval_seconds == 1800
    assert 1800 * leases.DUE_FRACTION - 5 < due_in(imap_account.pk) <= 1800 * leases.DUE_FRACTION
