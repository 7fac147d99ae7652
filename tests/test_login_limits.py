"""Brute force on both login forms: the portal's (allauth) and the admin's, one guard (django-axes).

The settings are the production ones (LOGIN_FAILURE_LIMIT 10, LOGIN_LOCKOUT_MINUTES 15):
the other tests' logins use the right password and stay far below them.
"""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from tests.conftest import make_user

PASSWORD = "geheim-123"  # make_user()
LIMIT = settings.AXES_FAILURE_LIMIT
LOCKED = "Anmeldung vorübergehend gesperrt"


def portal_login(client, email, password, **extra):
    return client.post(reverse("account_login"), {"login": email, "password": password}, **extra)


def admin_login(client, email, password, **extra):
    return client.post(reverse("admin:login"), {"username": email, "password": password,
                                                "next": reverse("admin:index")}, **extra)


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture
def staff(django_user_model):
    user = make_user(django_user_model, "support@example.com")
    django_user_model.objects.filter(pk=user.pk).update(is_staff=True, is_superuser=True)
    return user


def test_it_uses_a_realistic_limit():
    assert 5 <= LIMIT <= 20 and settings.AXES_COOLOFF_TIME >= timedelta(minutes=5)


@pytest.mark.django_db
@pytest.mark.parametrize("login", [portal_login, admin_login], ids=["portal", "admin"])
def test_it_refuses_the_right_password_after_too_many_wrong_ones(client, staff, login):
    for attempt in range(LIMIT - 1):
        response = login(client, "support@example.com", f"falsch-{attempt}")
        assert response.status_code == 200 and not signed_in(client)  # the form with its error
    response = login(client, "support@example.com", "falsch-letzter")
    assert response.status_code == 429 and LOCKED in response.content.decode()

    response = login(client, "support@example.com", PASSWORD)
    assert response.status_code == 429 and not signed_in(client)
    page = response.content.decode()
    assert LOCKED in page and f"für {settings.AXES_COOLOFF_TIME.seconds // 60} Minuten gesperrt" in page


@pytest.mark.django_db
def test_it_counts_both_forms_against_one_account_whatever_the_case(client, staff):
    for attempt in range(LIMIT // 2):
        portal_login(client, "Support@Example.com ", f"falsch-{attempt}")
    for attempt in range(LIMIT - LIMIT // 2):
        admin_login(client, "SUPPORT@example.com", f"falsch-{attempt}")
    assert portal_login(client, "support@example.com", PASSWORD).status_code == 429
    assert admin_login(client, "support@example.com", PASSWORD).status_code == 429


@pytest.mark.django_db
def test_it_locks_one_client_address_trying_many_accounts(client, django_user_model):
    for number in range(LIMIT):
        portal_login(client, f"gibt-es-nicht-{number}@example.com", "falsch", REMOTE_ADDR="198.51.100.7")
    victim = make_user(django_user_model, "anna@example.com")
    assert portal_login(client, victim.email, PASSWORD, REMOTE_ADDR="198.51.100.7").status_code == 429
    # Another address is not affected: the lock is per account and per address.
    assert portal_login(client, victim.email, PASSWORD, REMOTE_ADDR="198.51.100.8").status_code == 302


@pytest.mark.django_db
def test_it_locks_one_account_tried_from_many_addresses(client, staff):
    for number in range(LIMIT):
        admin_login(client, "support@example.com", "falsch", REMOTE_ADDR=f"203.0.113.{number + 1}")
    assert admin_login(client, "support@example.com", PASSWORD, REMOTE_ADDR="192.0.2.1").status_code == 429


@pytest.mark.django_db
def test_it_shows_the_lock_in_english_too(client, staff):
    for attempt in range(LIMIT):
        portal_login(client, "support@example.com", f"falsch-{attempt}")
    response = portal_login(client, "support@example.com", PASSWORD, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 429 and "Too many failed sign-in attempts" in response.content.decode()


@pytest.mark.django_db
def test_the_lock_expires(client, staff):
    for attempt in range(LIMIT):
        portal_login(client, "support@example.com", f"falsch-{attempt}")
    assert portal_login(client, "support@example.com", PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    response = portal_login(client, "support@example.com", PASSWORD)
    assert response.status_code == 302 and signed_in(client)
    assert not AccessAttempt.objects.exists()  # expired attempts are deleted, not kept


@pytest.mark.django_db
@pytest.mark.parametrize("command, argument", [("axes_reset_username", "support@example.com"),
                                               ("axes_reset_ip", "127.0.0.1"), ("axes_reset", None)])
def test_staff_can_lift_the_lock(client, staff, command, argument):
    for attempt in range(LIMIT):
        admin_login(client, "support@example.com", f"falsch-{attempt}")
    assert admin_login(client, "support@example.com", PASSWORD).status_code == 429
    call_command(command, *([argument] if argument else []))
    response = admin_login(client, "support@example.com", PASSWORD)
    assert response.status_code == 302 and signed_in(client)


@pytest.mark.django_db
def test_staff_see_the_attempts_in_the_admin_without_any_password(client, staff, user):
    for attempt in range(3):
        portal_login(client, "anna@example.com", f"Geheim-Versuch-{attempt}")
    client.force_login(staff)
    page = client.get(reverse("admin:axes_accessattempt_changelist")).content.decode()
    assert "anna@example.com" in page
    rows = " ".join(str(value) for row in AccessAttempt.objects.values_list() for value in row)
    assert "Geheim-Versuch" not in rows


@pytest.mark.django_db
def test_it_stops_recording_during_a_lock(client, staff):
    # Attempts while locked are refused without a row or a longer lock: what an attacker
    # can make the database hold is bounded.
    for attempt in range(LIMIT):
        portal_login(client, "support@example.com", f"falsch-{attempt}")
    before = list(AccessAttempt.objects.values_list("failures_since_start", "attempt_time"))
    for attempt in range(30):
        assert portal_login(client, "support@example.com", "falsch", HTTP_USER_AGENT=f"bot/{attempt}").status_code == 429
    assert list(AccessAttempt.objects.values_list("failures_since_start", "attempt_time")) == before


@pytest.mark.django_db
def test_a_few_typos_do_not_lock(client, staff):
    for attempt in range(3):
        portal_login(client, "support@example.com", f"falsch-{attempt}")
    assert portal_login(client, "support@example.com", PASSWORD).status_code == 302
    assert get_user_model().objects.get(pk=staff.pk).last_login is not None
