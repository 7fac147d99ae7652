"""The settings page (E-Mail-Synchronisierung) costs a fixed number of database queries, whatever the
number of accounts and migrations a user has (the page is the busiest one a user opens)."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from migration.models import Migration
from sync.models import MailAccount
from migration.selectors import SETTINGS_PAGE_ACCOUNT_FIELDS, current_campaign, settings_page_rows

pytestmark = pytest.mark.django_db

# Accounts with their skipped counts and migrations, in one join (session, user and V2 banner come from the cache).
SETTINGS_PAGE_QUERIES = 1


def add_accounts(user, make_account, first: int, count: int) -> None:
    for number in range(first, first + count):
        account = make_account(user, f"konto{number}@example.org", engine="v2")
        for status in ("failed", "awaiting_user"):
            Migration.objects.create(account=account, user=user, campaign=current_campaign(), provider_kind="imap",
                                     status=status, error_code="auth_failed" if status == "failed" else "")


def page_queries(client) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("settings-mail"))
    assert response.status_code == 200
    return [query["sql"] for query in queries.captured_queries]


def test_settings_page_query_count_does_not_grow_with_accounts(signed_in, user, make_account):
    add_accounts(user, make_account, 0, 1)
    page_queries(signed_in)  # fills the banner's cache, as any earlier page of the session has
    one = page_queries(signed_in)
    add_accounts(user, make_account, 1, 9)
    page_queries(signed_in)  # the new V2 accounts changed the banner: the services dropped its cache
    ten = page_queries(signed_in)
    assert len(ten) == len(one), "\n".join(q[:150] for q in one + ["----"] + ten)
    assert len(ten) <= SETTINGS_PAGE_QUERIES, "\n".join(ten)


def test_templates_are_compiled_once_per_process():
    """The cached template loader is on (Django's default since 4.1 when TEMPLATES names no loaders):
    a page's templates are read and compiled once per process, not on every request."""
    from django.template import engines
    from django.template.loaders.cached import Loader as CachedLoader

    engine = engines["django"].engine
    first = engine.get_template("migration/settings_mail.html")
    assert isinstance(engine.template_loaders[0], CachedLoader)
    assert engine.get_template("migration/settings_mail.html") is first


# --- what keeps the page cheap (issue 13): counts, not timings ------------------------------------------

def page_templates(client) -> list[str]:
    response = client.get(reverse("settings-mail"))
    assert response.status_code == 200
    return [template.name for template in response.templates]


def test_it_renders_the_same_templates_whatever_the_number_of_accounts(signed_in, user, make_account):
    """No template per row (an {% include %} in the loop costs a template render per account)."""
    add_accounts(user, make_account, 0, 1)
    page_templates(signed_in)  # fills the per-process fragments, as any earlier page has
    one = page_templates(signed_in)
    add_accounts(user, make_account, 1, 9)
    ten = page_templates(signed_in)
    assert ten == one
    assert one.count("migration/settings_mail.html") == 1


def test_it_reads_no_secret_and_no_unshown_column(signed_in, user, make_account):
    """The page loads the columns it shows: not the encrypted credentials, nor a migration's JSON state."""
    add_accounts(user, make_account, 0, 2)
    sql = "\n".join(page_queries(signed_in)).lower()
    assert not re.search(r"select\s+\*|\w\.\*", sql)  # columns named, never all of them
    for column in ("secret_encrypted", "token_cache_encrypted", "tls_ca_pem", "detected", "connection", "cursors"):
        assert not re.search(rf"\b{column}\b", sql), column


def test_its_account_rows_are_those_of_the_general_selector(user, other_user, make_account):
    """The page's written-out SQL returns what accounts_for_user (the ORM's version) returns."""
    from sync.models import SkippedMessage
    from sync.selectors import accounts_for_user

    second = make_account(user, "b@example.org")
    first = make_account(user, "a@example.org", engine="v3", status="error", last_sync_error="auth_failed")
    make_account(other_user, "c@example.org")
    for number in range(3):
        SkippedMessage.objects.create(account=second, folder="INBOX", reference=f"uid:1:{number}", reason="gone")
    add_migrations(second, "failed", "awaiting_user", "failed")  # rows of the join: one account each

    page = settings_page_rows(user)
    general = list(accounts_for_user(user))
    assert [tuple(row[name] for name in SETTINGS_PAGE_ACCOUNT_FIELDS) for row in page] == [
        (a.pk, a.address, a.provider_kind, a.engine, a.status, a.last_sync_at, a.last_sync_error, a.skipped_count)
        for a in general]
    assert [row["pk"] for row in page] == [first.pk, second.pk] and page[1]["skipped_count"] == 3


def test_it_reads_the_last_sync_time_as_an_aware_datetime(user, make_account):
    account = make_account(user, "a@example.org", engine="v3")
    synced = timezone.now().replace(microsecond=0)
    MailAccount.objects.filter(pk=account.pk).update(last_sync_at=synced)
    (row,) = settings_page_rows(user)
    assert row["last_sync_at"] == synced and timezone.is_aware(row["last_sync_at"])


def add_migrations(account, *statuses) -> list[Migration]:
    """Migrations of `account` in the order given, each created a minute after the one before."""
    made = []
    for minute, status in enumerate(statuses):
        migration = Migration.objects.create(account=account, user=account.owner, campaign=current_campaign(),
                                             provider_kind="imap", status=status, error_code=f"code_{minute}")
        Migration.objects.filter(pk=migration.pk).update(created_at=timezone.now() + timedelta(minutes=minute))
        made.append(migration)
    return made


@pytest.mark.parametrize("statuses, active, latest", [
    ((), None, None),
    (("failed",), None, 0),
    (("failed", "failed", "awaiting_user"), 2, 2),
    (("awaiting_user", "failed"), 0, 1),  # an older active one beside a newer failed attempt
    (("failed", "verifying", "done"), 1, 2),
])
def test_it_joins_each_account_to_its_active_and_its_latest_migration(user, make_account, statuses, active, latest):
    account = make_account(user, "a@example.org", engine="v2")
    other = make_account(user, "b@example.org", engine="v2")
    add_migrations(other, "awaiting_user")  # another account's migrations stay with that account
    made = add_migrations(account, *statuses)
    (row, other_row) = settings_page_rows(user)
    assert row["pk"] == account.pk and other_row["pk"] == other.pk
    expected = {"active": active, "latest": latest}
    for name in ("active", "latest"):
        found, want = row[name], expected[name]
        if want is None:
            assert found is None, name
        else:
            migration = made[want]
            assert found == {"pk": migration.pk, "status": migration.status, "error_code": migration.error_code}, name
    assert other_row["active"]["status"] == "awaiting_user" == other_row["latest"]["status"]


def test_it_shows_each_user_their_own_address_and_language_with_shared_fragments(
    client, user, other_user, make_account,
):
    """The cached top navigation and settings menu carry nothing of a user: the next user sees their own
    address, and the English page its English menu."""
    make_account(user, "anna@gmx.de")
    client.force_login(user)
    assert "anna@example.com" in client.get(reverse("settings-mail")).content.decode()
    client.force_login(other_user)
    german = client.get(reverse("settings-mail")).content.decode()
    assert "bernd@example.com" in german and "anna@example.com" not in german and "anna@gmx.de" not in german
    client.cookies["django_language"] = "en"
    english = client.get(reverse("settings-mail")).content.decode()
    assert ">Overview<" in english and ">Settings<" in english and ">Personal email sync<" in english
    assert "Übersicht" not in english and "Einstellungen" not in english


def redis_calls() -> int:
    """Commands the test Redis has answered so far (INFO commandstats), INFO itself left out."""
    from django.core.cache import cache

    stats = cache._cache.get_client().info("commandstats")
    return sum(entry["calls"] for name, entry in stats.items() if name != "cmdstat_info")


@pytest.mark.parametrize("engine", ["v2", "v3"])
def test_a_warm_page_costs_two_cache_round_trips_and_one_query(signed_in, user, make_account, engine):
    """The session; then the user, the banner's accounts and the campaign dates in one MGET."""
    add_accounts(user, make_account, 0, 3) if engine == "v2" else make_account(user, "v3@example.org", engine="v3")
    page_queries(signed_in)  # fills the caches
    page_queries(signed_in)
    before = redis_calls()
    queries = page_queries(signed_in)
    assert redis_calls() - before == 2
    assert len(queries) == 1


def test_every_form_on_the_page_carries_the_pages_one_csrf_token_and_it_is_accepted(user, make_account):
    """The rows' forms are written in Python (migration/row_actions.py) with the page's token, the one the
    template's {% csrf_token %} uses too: masked once per page, and a real POST with it passes the check."""
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    accounts = [make_account(user, f"konto{n}@example.org", engine="v2") for n in range(2)]
    html = client.get(reverse("settings-mail")).content.decode()
    tokens = re.findall(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert len(tokens) == 4 and len(set(tokens)) == 1  # language, sign-out and the two start forms
    for account in accounts:
        assert f'action="{reverse("migration-start", args=[account.pk])}"' in html
    response = client.post(reverse("migration-start", args=[accounts[0].pk]), {"csrfmiddlewaretoken": tokens[0]})
    assert response.status_code == 302 and "/migration/" in response["Location"]
