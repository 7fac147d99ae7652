"""A company's own mail server: credential submissions over its budget wait for a later window instead of
being refused (sync.attempt_queue), the user is told when theirs is tried, and the sweeper tries it then.
Guessing stays limited: each window reaches the server with no more than the budget, and a user's own
limit still refuses at once."""

import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from migration import services, steps
from migration.models import Migration
from sync import attempt_queue, egress
from sync.attempt_queue import reserve_attempt
from sync.models import AttemptBudget
from tests.conftest import make_user
from tests.fakes.fixtures import hosts  # noqa: F401

pytestmark = pytest.mark.django_db

SERVER = "mail.firma.test"


@pytest.fixture
def server(hosts):  # noqa: F811
    hosts[SERVER] = "203.0.113.7"  # the company's own server (made up; nothing is contacted)
    return SERVER


@pytest.fixture(autouse=True)
def still_window(monkeypatch):
    """The window does not turn during a test (it would, once in a while, at a ten-minute boundary)."""
    window = int(time.time() // egress.RATE_WINDOW_SECONDS)
    monkeypatch.setattr(attempt_queue, "current_window", lambda: window)
    return window


def window_now() -> int:
    return attempt_queue.current_window()


def test_over_the_budget_submissions_wait_window_by_window_and_no_window_gets_more(settings, server):
    settings.EGRESS_RATE_PER_DESTINATION, settings.EGRESS_RATE_QUEUE_WINDOWS = 2, 2
    window = window_now()
    answers = [reserve_attempt(user_id, server, 993) for user_id in range(1, 7)]
    later = [egress.RATE_WINDOW_SECONDS * (window + ahead) for ahead in (1, 2)]
    assert answers[:2] == [None, None]
    assert [answer.timestamp() for answer in answers[2:]] == [later[0], later[0], later[1], later[1]]
    with pytest.raises(egress.RateLimited):  # beyond the queue's horizon: refused, as before
        reserve_attempt(7, server, 143)  # ports share the budget
    counts = dict(AttemptBudget.objects.filter(key="dest:203.0.113.7").values_list("window", "attempts"))
    assert counts == {window: 2, window + 1: 2, window + 2: 2}


def test_a_users_own_limit_still_refuses_at_once(settings, server):
    settings.EGRESS_RATE_PER_USER, settings.EGRESS_RATE_PER_DESTINATION = 2, 1
    assert reserve_attempt(5, server, 993) is None
    assert reserve_attempt(5, server, 993) is not None  # queued: the server's budget is used
    with pytest.raises(egress.RateLimited):
        reserve_attempt(5, server, 993)


def test_2000_users_of_one_server_are_all_accepted_at_the_budgets_rate(settings, server):
    settings.EGRESS_RATE_PER_DESTINATION, settings.EGRESS_RATE_QUEUE_WINDOWS = 100, 19
    answers = [reserve_attempt(user_id, server, 993) for user_id in range(1, 2001)]
    assert answers.count(None) == 100
    assert len({answer for answer in answers if answer is not None}) == 19
    assert set(AttemptBudget.objects.filter(key="dest:203.0.113.7").values_list("attempts", flat=True)) == {100}


def detected(user, account) -> Migration:
    migration = services.start_migration(user=user, account=account)
    assert steps.run_migration(migration.pk) == "awaiting_user"
    return Migration.objects.get(pk=migration.pk)


def submit(client, migration):
    return client.post(reverse("migration-credentials", args=[migration.pk]), {
        "address": migration.account.address, "password": "geheim", "host": SERVER, "port": 993,
        "security": "ssl", "username": migration.account.address})


def test_the_user_over_the_budget_is_told_when_and_the_sweeper_tries_it_then(
        client, settings, server, make_account, django_user_model):
    settings.EGRESS_RATE_PER_DESTINATION = 1
    first, second = (make_user(django_user_model, f"{name}@firma.test") for name in ("eva", "max"))
    migrations = [detected(user, make_account(user, user.email)) for user in (first, second)]

    client.force_login(first)
    assert submit(client, migrations[0]).status_code == 302
    now = Migration.objects.get(pk=migrations[0].pk)
    assert now.status == "verifying" and now.retry_at is None  # queued for the worker right away

    client.force_login(second)
    assert submit(client, migrations[1]).status_code == 302
    waiting = Migration.objects.get(pk=migrations[1].pk)
    assert waiting.status == "verifying"
    assert waiting.retry_at.timestamp() == egress.RATE_WINDOW_SECONDS * (window_now() + 1)
    page = client.get(reverse("migration-detail", args=[waiting.pk])).content.decode()
    assert 'data-testid="queued"' in page
    assert timezone.localtime(waiting.retry_at).strftime("%H:%M") in page

    assert waiting.pk not in services.sweep_stuck_migrations()  # not before its window
    Migration.objects.filter(pk=waiting.pk).update(retry_at=timezone.now() - timedelta(seconds=1))
    assert waiting.pk in services.sweep_stuck_migrations()  # then the sweeper queues its check


def verify(dovecot, user, make_account, *, right: bool) -> str:
    """A migration to the local Dovecot whose submission took its slot as the view does; the worker's verdict."""
    address, password = dovecot.take_mailbox()
    account = make_account(user, address, imap_host="127.0.0.1", imap_port=dovecot.tls_port, imap_security="ssl",
                           username=address)
    migration = detected(user, account)
    assert reserve_attempt(user.pk, "127.0.0.1", dovecot.tls_port) is None
    services.submit_imap_credentials(
        migration=migration, actor="test", password=password if right else "falsch",
        server=services.ImapSettings("127.0.0.1", dovecot.tls_port, "ssl", address))
    return steps.run_migration(migration.pk)


def test_accepted_logins_give_their_slot_back_and_wrong_passwords_use_it_up(
        dovecot, mail_settings, settings, make_account, django_user_model):
    settings.EGRESS_RATE_PER_DESTINATION = 2
    users = [make_user(django_user_model, f"k{number}@firma.test") for number in range(5)]
    budget = AttemptBudget.objects.filter(key="dest:127.0.0.1", window=window_now())
    for user in users[:3]:  # three right passwords in a row through a budget of two
        assert verify(dovecot, user, make_account, right=True) == "done"
    assert budget.get().attempts == 0
    assert verify(dovecot, users[3], make_account, right=False) == "failed"
    assert budget.get().attempts == 1  # a failure keeps its slot
    assert verify(dovecot, users[4], make_account, right=False) == "failed"
    assert reserve_attempt(99, "127.0.0.1", dovecot.tls_port) is not None  # guessing: the next one waits


def test_2000_right_passwords_pass_in_one_window_and_guessing_is_still_limited(settings, server):
    """A company rollout: every accepted login gives its slot back (as the worker does after a login that
    worked), so 2,000 users of one server migrate without waiting, and wrong passwords still use the budget up."""
    settings.EGRESS_RATE_PER_DESTINATION, settings.EGRESS_RATE_QUEUE_WINDOWS = 100, 19
    waited = 0
    for user_id in range(1, 2001):
        if reserve_attempt(user_id, server, 993) is not None:
            waited += 1
        attempt_queue.refund(server, 993)  # the login worked
    assert waited == 0
    assert set(AttemptBudget.objects.filter(key="dest:203.0.113.7").values_list("attempts", flat=True)) == {0}
    wrong = [reserve_attempt(5000 + number, server, 993) for number in range(101)]  # no refund: refused logins
    assert wrong[:100] == [None] * 100
    assert wrong[100] is not None  # the 101st guess waits for the next window
