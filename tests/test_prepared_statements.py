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
