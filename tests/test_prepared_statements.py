"""PostgreSQL plans a repeated query once (portal/env.py: server-side binding and prepared statements), and a
deployment behind a pooler that cannot keep prepared statements turns them off."""

import pytest
from django.db import connection

from migration.selectors import settings_page_rows
from portal.env import envdatabase

URL = "postgres://portal@db.example:5432/portal"


def test_postgres_gets_server_side_binding_and_prepared_statements(monkeypatch):
    monkeypatch.delenv("DATABASE_PREPARED_STATEMENTS", raising=False)
    assert envdatabase("DATABASE_URL_TEST", URL)["OPTIONS"] == {"server_side_binding": True, "prepare_threshold": 5}


def test_they_can_be_turned_off_for_a_pooler(monkeypatch):
    monkeypatch.setenv("DATABASE_PREPARED_STATEMENTS", "false")
    assert envdatabase("DATABASE_URL_TEST", URL)["OPTIONS"] == {}


def test_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("DATABASE_PREPARED_STATEMENTS", "vielleicht")
    with pytest.raises(Exception, match="DATABASE_PREPARED_STATEMENTS"):
        envdatabase("DATABASE_URL_TEST", URL)


def prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db
def test_the_settings_pages_query_is_prepared_after_five_runs(user, make_account):
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    make_account(user, "anna@gmx.de")
    for _ in range(5):
        settings_page_rows(user)
    assert not any("sync_skippedmessage" in statement for statement in prepared())
    settings_page_rows(user)
    (statement,) = [statement for statement in prepared() if "sync_skippedmessage" in statement]
    assert "$1" in statement  # bound on the server: one plan for every user


# --- a schema change under prepared statements (a deploy's migrate while older processes serve) -------------

COLUMN = "sync_mailaccount.last_sync_error"  # varchar(300), returned by the settings page's query


def alter_elsewhere(length: int) -> None:
    """Changes the column's type from another session, as `migrate` in a deploy does."""
    from django.db import connections

    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute(f"ALTER TABLE sync_mailaccount ALTER COLUMN last_sync_error TYPE varchar({length})")
    finally:
        other.close()


@pytest.fixture
def stale_plan(user, make_account):
    """The settings page's query prepared on this connection, then its result type changed elsewhere."""
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    make_account(user, "anna@gmx.de")
    for _ in range(6):
        settings_page_rows(user)
    assert any("sync_skippedmessage" in statement for statement in prepared())
    alter_elsewhere(301)
    yield
    alter_elsewhere(300)


@pytest.mark.django_db(transaction=True)
def test_a_query_prepared_before_a_column_type_change_still_answers(user, stale_plan):
    before = connection.close_at
    assert [row["address"] for row in settings_page_rows(user)] == ["anna@gmx.de"]
    assert connection.close_at is not None and connection.close_at != before  # closed at the request's end
    for _ in range(6):  # and prepared again, against the new type
        assert [row["address"] for row in settings_page_rows(user)] == ["anna@gmx.de"]


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_it_fails_once_and_the_rollback_clears_the_plan(user, stale_plan):
    from django.db import NotSupportedError, transaction

    from portal.prepared import is_stale_plan

    with pytest.raises(NotSupportedError) as raised:
        with transaction.atomic():
            settings_page_rows(user)
    assert is_stale_plan(raised.value)
    with transaction.atomic():
        assert [row["address"] for row in settings_page_rows(user)] == ["anna@gmx.de"]
