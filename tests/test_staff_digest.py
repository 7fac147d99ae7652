"""The daily digest for support staff: counts and the dashboard link, once a day, only above the broken share."""

from datetime import datetime, time, timedelta

import pytest
from django.core import mail
from django.utils import timezone

from migration import staff_digest
from portal import profiles
from sync.models import AccountStatus
from tests.conftest import make_user


def at(days: int = 0, hour: int = 10):
    return timezone.make_aware(datetime.combine(timezone.localdate() + timedelta(days=days), time(hour)))


@pytest.fixture
def accounts(user, make_account):
    make_account(user, "a@gmx.de")  # on V2, never started
    make_account(user, "b@firma.de", engine="v3")
    make_account(user, "c@firma.de", engine="v3", status=AccountStatus.RECONNECT)


@pytest.fixture
def staff(django_user_model):
    people = []
    for email, language in (("support@example.com", "de"), ("lead@example.com", "en")):
        person = make_user(django_user_model, email)
        person.is_staff = True
        person.save()
        profiles.set_language(user=person, language=language)
        people.append(person)
    return people


@pytest.mark.django_db
def test_staff_get_one_digest_a_day_with_the_counts_and_the_dashboard_link(settings, accounts, staff):
    settings.STAFF_DIGEST_BROKEN_PERCENT = 10
    assert staff_digest.send_digest(now=at(0, 7)) == 0  # before REMINDER_SEND_HOUR
    assert staff_digest.send_digest(now=at()) == 2
    assert staff_digest.send_digest(now=at()) == 0  # a second beat, the same day
    german, english = sorted(mail.outbox, key=lambda m: m.to[0], reverse=True)
    assert german.to == ["support@example.com"] and english.to == ["lead@example.com"]
    assert "noch 1 von 3 Konten auf V2" in german.subject and "1 of 3 accounts still on V2" in english.subject
    assert "/admin/migration/campaignaccount/dashboard/" in german.body
    assert "50.0 %" in german.body and "Neu verbinden nötig" in german.body

    assert staff_digest.send_digest(now=at(1)) == 2  # the next day
    assert len(mail.outbox) == 4


@pytest.mark.django_db
def test_no_digest_while_few_accounts_are_broken(settings, accounts, staff):
    settings.STAFF_DIGEST_BROKEN_PERCENT = 60
    assert staff_digest.send_digest(now=at()) == 0 and mail.outbox == []


@pytest.mark.django_db
def test_the_digest_goes_to_the_configured_addresses(settings, accounts, staff):
    settings.STAFF_DIGEST_BROKEN_PERCENT = 0
    settings.STAFF_DIGEST_TO = ["team@firma.example"]
    assert staff_digest.send_digest(now=at()) == 1
    assert [m.to for m in mail.outbox] == [["team@firma.example"]]
