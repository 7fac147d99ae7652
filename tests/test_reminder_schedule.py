"""The campaign's reminder cadence over a simulated month.

"Today" moves through the campaign through the clock run_due_reminders takes
(no sleeping, no frozen global time); every day two beats run it, the queued
reminders are sent and each is delivered twice (a redelivered task). Counted
per user: the mails that reached the e-mail backend.
"""

import threading
from collections import Counter
from datetime import date, datetime, time, timedelta

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from migration import reminder_schedule, reminders, tasks
from migration.models import Campaign, Reminder
from migration.selectors import current_campaign
from portal.models import UserProfile
from tests.conftest import make_user

START = date(2026, 3, 2)
MIGRATE_BY = START + timedelta(days=20)
SHUTDOWN = START + timedelta(days=30)


def at(day: int, hour: int = 10) -> datetime:
    return timezone.make_aware(datetime.combine(START + timedelta(days=day), time(hour)))


@pytest.fixture
def campaign(settings):
    settings.CAMPAIGN_MIGRATE_BY, settings.CAMPAIGN_V2_SHUTDOWN = MIGRATE_BY, SHUTDOWN
    settings.REMINDER_SEND_HOUR = 9
    return current_campaign()


@pytest.fixture
def queued(monkeypatch):
    ids = []
    monkeypatch.setattr(tasks.send_reminder, "delay", ids.append)
    return ids


def deliver(queued):
    """What the worker does with the queued ids: send each, and once more (a task delivered twice)."""
    for pk in queued:
        reminders.send(pk)
        reminders.send(pk)
    queued.clear()


@pytest.mark.django_db
def test_the_default_cadence(campaign):
    kinds = [(step.kind, (step.day - START).days) for step in reminder_schedule.schedule(campaign)]
    assert kinds == [("before-30", -10), ("before-14", 6), ("before-7", 13), ("before-3", 17), ("before-1", 19),
                     ("after-1", 21), ("shutdown", 30)]
    assert reminder_schedule.due_step(campaign, START - timedelta(days=11)) is None
    assert reminder_schedule.due_step(campaign, START).kind == "before-30"
    assert reminder_schedule.due_step(campaign, START + timedelta(days=16)).kind == "before-7"
    assert reminder_schedule.due_step(campaign, SHUTDOWN).kind == "shutdown"
    assert reminder_schedule.due_step(campaign, SHUTDOWN + timedelta(days=1)) is None


@pytest.mark.django_db
def test_a_month_of_campaign_days(campaign, django_user_model, make_account, queued,
                                  django_capture_on_commit_callbacks, admin_user):
    users = {name: make_user(django_user_model, f"{name}@example.com")
             for name in ("anna", "bernd", "clara", "dora", "emil", "frank")}
    make_account(users["anna"], "anna@gmx.de")
    bernd = make_account(users["bernd"], "bernd@gmx.de")
    make_account(users["clara"], "clara@gmx.de")
    make_account(users["dora"], "dora@firma.de", engine="v3")  # already on V3: never reminded
    make_account(users["emil"], "emil@gmx.de")
    make_account(users["frank"], "frank@gmx.de")
    make_account(users["frank"], "frank@web.de")
    anonymous = Client(enforce_csrf_checks=True)

    for day in range(-12, 36):
        if day == 8:
            # Clara follows the link at the end of her last reminder (a mail program's one-click POST).
            token = reminders.unsubscribe_token(users["clara"].pk)
            assert anonymous.post(reverse("reminders-unsubscribe", args=[token])).status_code == 200
        if day == 13:
            # Support reminds Emil by hand at 8:00; the cadence's step of the day waits for him until tomorrow.
            with django_capture_on_commit_callbacks(execute=True):
                assert reminders.remind(user_ids=[users["emil"].pk], sent_by=admin_user, now=at(13, 8)) == (1, 0)
        if day == 15:
            bernd.engine = "v3"  # Bernd migrated
            bernd.save(update_fields=["engine"])
        if day == 17:
            continue  # no beat ran that day: its step goes out the next day
        with django_capture_on_commit_callbacks(execute=True):
            assert reminder_schedule.run_due_reminders(now=at(day, 7)) == []  # before REMINDER_SEND_HOUR
            first = reminder_schedule.run_due_reminders(now=at(day, 10))
            second = reminder_schedule.run_due_reminders(now=at(day, 10) + timedelta(seconds=1))  # second beat
        assert second == []
        deliver(queued)

    per_user = Counter(message.to[0].split("@")[0] for message in mail.outbox)
    assert per_user == {"anna": 7, "bernd": 3, "clara": 2, "emil": 8, "frank": 7}
    kinds = {name: [r.kind for r in Reminder.objects.filter(user=user).order_by("created_at")]
             for name, user in users.items()}
    assert kinds["anna"] == ["before-30", "before-14", "before-7", "before-3", "before-1", "after-1", "shutdown"]
    assert kinds["emil"] == ["before-30", "before-14", "manual", "before-7", "before-3", "before-1", "after-1",
                             "shutdown"]
    days = {name: [(r.created_at.date() - START).days for r in Reminder.objects.filter(user=user)
                   .order_by("created_at")] for name, user in users.items()}
    assert days["anna"] == [-10, 6, 13, 18, 19, 21, 30]  # the step of day 17 went out on day 18
    assert days["emil"] == [-10, 6, 13, 14, 18, 19, 21, 30]
    assert days["bernd"] == [-10, 6, 13]
    assert days["clara"] == [-10, 6]
    assert UserProfile.objects.get(user=users["clara"]).campaign_reminders is False
    franks = [m for m in mail.outbox if m.to == [users["frank"].email]]
    assert all("frank@gmx.de" in m.body and "frank@web.de" in m.body for m in franks)


@pytest.mark.django_db
def test_at_most_one_reminder_per_user_in_the_minimum_gap(campaign, user, make_account, queued,
                                                          django_capture_on_commit_callbacks):
    Campaign.objects.filter(pk=campaign.pk).update(reminder_days_before="7,5,3,1", reminder_min_days=3)
    make_account(user, "anna@gmx.de")
    for day in range(0, 31):
        with django_capture_on_commit_callbacks(execute=True):
            reminder_schedule.run_due_reminders(now=at(day))
        deliver(queued)
    days = [(r.created_at.date() - START).days for r in Reminder.objects.order_by("created_at")]
    # Steps on days 13, 15, 17, 19, 21 (after) and 30 (shutdown); each waits until 3 days have passed.
    assert days == [13, 16, 19, 22, 30]
    assert len(mail.outbox) == 5


@pytest.mark.django_db
def test_a_mail_says_how_to_stop_the_reminders(campaign, user, make_account, queued,
                                               django_capture_on_commit_callbacks):
    make_account(user, "anna@gmx.de")
    with django_capture_on_commit_callbacks(execute=True):
        reminder_schedule.run_due_reminders(now=at(6))
    deliver(queued)
    [message] = mail.outbox
    url = message.extra_headers["List-Unsubscribe"].strip("<>")
    assert message.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert url in message.body and url.startswith("http://")
    path = url.split("://", 1)[1].split("/", 1)[1]
    client = Client(enforce_csrf_checks=True)

    page = client.get("/" + path)
    assert page.status_code == 200 and "Erinnerungen abbestellen" in page.content.decode()
    assert not UserProfile.objects.exists()  # opening the link (a mail scanner) changes nothing

    forged = client.post("/" + path.replace(path.split("/")[-2], path.split("/")[-2][:-2] + "xx"))
    assert forged.status_code == 400 and not UserProfile.objects.exists()

    assert client.post("/" + path).status_code == 200
    assert UserProfile.objects.get(user=user).campaign_reminders is False


@pytest.mark.django_db
def test_a_reminder_queued_before_the_user_migrated_is_not_sent(campaign, user, make_account, queued,
                                                                django_capture_on_commit_callbacks):
    account = make_account(user, "anna@gmx.de")
    with django_capture_on_commit_callbacks(execute=True):
        [pk] = reminder_schedule.run_due_reminders(now=at(6))
    account.engine = "v3"
    account.save(update_fields=["engine"])
    assert not reminders.send(pk)
    assert mail.outbox == [] and Reminder.objects.get(pk=pk).error == "no_v2_account"


@pytest.mark.django_db(transaction=True)
def test_two_beats_at_the_same_moment_remind_each_user_once(campaign, django_user_model, make_account, queued):
    for i in range(20):
        make_account(make_user(django_user_model, f"user{i}@example.com"), f"user{i}@gmx.de")
    barrier = threading.Barrier(2)
    results = []

    def beat():
        try:
            barrier.wait()
            results.append(reminder_schedule.run_due_reminders(now=at(6)))
        finally:
            connection.close()

    threads = [threading.Thread(target=beat) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(len(r) for r in results) == [0, 20]
    assert Reminder.objects.filter(kind="before-14").count() == 20
    assert len(queued) == 20


@pytest.mark.django_db
def test_staff_edit_the_cadence_and_a_bad_list_is_refused(admin_client, campaign):
    url = reverse("admin:migration_campaign_change", args=[campaign.pk])
    form = {"name": campaign.name, "migrate_by": MIGRATE_BY.isoformat(), "v2_shutdown": SHUTDOWN.isoformat(),
            "is_active": "on", "reminder_day_after": "on", "reminder_min_days": "2"}
    response = admin_client.post(url, {**form, "reminder_days_before": "30, 14, bald"})
    assert response.status_code == 200 and "„bald“ ist keine Anzahl Tage" in response.content.decode()

    response = admin_client.post(url, {**form, "reminder_days_before": "21, 7"})
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert [step.kind for step in reminder_schedule.schedule(campaign)] == ["before-21", "before-7", "after-1"]
    assert campaign.reminder_min_days == 2


def test_beat_runs_the_cadence():
    from portal.celery import app

    app.loader.import_default_modules()
    app.finalize()
    tasks_scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "migration.tasks.send_due_reminders" in tasks_scheduled
