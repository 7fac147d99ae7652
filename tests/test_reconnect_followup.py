"""An account that stays in "Neu verbinden": one follow-up mail after RECONNECT_FOLLOWUP_DAYS, once per episode."""

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from sync import notifications, services
from sync.models import AccountStatus, MailAccount


@pytest.fixture
def sent_tasks(monkeypatch):
    calls = []
    monkeypatch.setattr(notifications.current_app, "send_task", lambda name, args, kwargs=None: calls.append(
        (name, args, kwargs)))
    monkeypatch.setattr(notifications, "enqueue_reconnect_mail", lambda pk: None)
    return calls


@pytest.mark.django_db
def test_one_follow_up_per_time_the_account_broke(settings, user, make_account, sent_tasks,
                                                  django_capture_on_commit_callbacks):
    settings.RECONNECT_FOLLOWUP_DAYS = 3
    account = make_account(user, "anna@firma.de", engine="v3")
    with django_capture_on_commit_callbacks(execute=True):
        services.record_v3_failure(account_id=account.pk, error_code="auth_failed")
    assert MailAccount.objects.get(pk=account.pk).reconnect_since is not None
    # The first episode happened ten days ago (the clock moves through it; the second episode is now).
    since = timezone.now() - timedelta(days=10)
    MailAccount.objects.filter(pk=account.pk).update(reconnect_since=since)

    assert notifications.send_reconnect_followups(now=since + timedelta(days=2)) == []  # not yet
    day3 = since + timedelta(days=3, minutes=1)
    assert notifications.send_reconnect_followups(now=day3) == [account.pk]
    assert notifications.send_reconnect_followups(now=day3) == []  # a second beat
    assert notifications.send_reconnect_followups(now=day3 + timedelta(days=10)) == []  # bounded: one per episode
    assert sent_tasks == [(notifications.RECONNECT_MAIL_TASK, [account.pk], {"followup": True})]

    assert notifications.send_reconnect_mail(account.pk, followup=True)
    assert mail.outbox[0].subject.startswith("Erinnerung: anna@firma.de wird seit")

    # Re-connected, then broken again: a new episode gets its own follow-up.
    MailAccount.objects.filter(pk=account.pk).update(status=AccountStatus.ACTIVE)
    with django_capture_on_commit_callbacks(execute=True):
        services.record_v3_failure(account_id=account.pk, error_code="auth_failed")
    again = MailAccount.objects.get(pk=account.pk).reconnect_since
    assert again > since
    assert notifications.send_reconnect_followups(now=again + timedelta(days=3, minutes=1)) == [account.pk]


@pytest.mark.django_db
def test_a_reconnected_account_gets_no_follow_up(settings, user, make_account, sent_tasks):
    account = make_account(user, "anna@firma.de", engine="v3", status=AccountStatus.RECONNECT,
                           reconnect_since=timezone.now() - timedelta(days=5))
    MailAccount.objects.filter(pk=account.pk).update(status=AccountStatus.ACTIVE)
    assert notifications.send_reconnect_followups() == []
    assert not notifications.send_reconnect_mail(account.pk, followup=True)
    assert mail.outbox == []


@pytest.mark.django_db
def test_accounts_broken_before_the_upgrade_count_from_the_first_run(settings, user, make_account, sent_tasks):
    account = make_account(user, "anna@firma.de", engine="v3", status=AccountStatus.RECONNECT)
    now = timezone.now()
    assert notifications.send_reconnect_followups(now=now) == []
    assert MailAccount.objects.get(pk=account.pk).reconnect_since == now
    assert notifications.send_reconnect_followups(now=now + timedelta(days=3)) == [account.pk]
