"""The message list and the dashboard read a user's newest messages through the per-account index: no sort
over all of the user's messages, whatever the store's size (EXPLAIN on the real PostgreSQL at 20,000 rows)."""

from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from sync.models import SyncedMessage
from sync.selectors import messages_for_user

pytestmark = pytest.mark.django_db
START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def fill(account, count: int, *, undated: int = 0) -> None:
    SyncedMessage.objects.bulk_create(
        [SyncedMessage(account=account, dedup_key=f"{account.pk}-{n}@example.org", folder="INBOX",
                       subject=f"Nachricht {n}", received_at=START + timedelta(minutes=n), imported_by="v3")
         for n in range(count)]
        + [SyncedMessage(account=account, dedup_key=f"{account.pk}-ohne-{n}", folder="INBOX",
                         subject=f"ohne Datum {n}", received_at=None, imported_by="v3") for n in range(undated)],
        batch_size=2000,
    )


@pytest.fixture
def big_store(user, other_user, make_account):
    first, second = make_account(user, "anna@firma.example"), make_account(user, "anna.privat@gmx.de")
    fill(first, 12000, undated=3)
    fill(second, 8000)
    fill(make_account(other_user, "bernd@firma.example"), 20000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE sync_syncedmessage")
    return first, second


def plans(queries) -> list[str]:
    found = []
    with connection.cursor() as cursor:
        for query in queries:
            if "sync_syncedmessage" in query["sql"] and "ORDER BY" in query["sql"]:
                cursor.execute("EXPLAIN " + query["sql"])
                found.append("\n".join(row[0] for row in cursor.fetchall()))
    return found


def test_a_page_reads_the_index_without_sorting_the_users_messages(big_store, user):
    assert connection.vendor == "postgresql"
    with CaptureQueriesContext(connection) as queries:
        page = list(messages_for_user(user)[25:50])
    found = plans(queries.captured_queries)
    assert found, "no ordered query was run"
    for plan in found:
        assert "message_newest_first_nulls_last" in plan, plan
        # A sort of at most the few rows the index gave (the merge of the accounts' heads) is fine;
        # no sort reads a table or all of an account's rows.
        assert "Seq Scan" not in plan, plan
        assert "Sort" not in plan.split("Limit")[-1], plan
    assert len(queries.captured_queries) == 3  # the accounts, the heads of both, the page's rows
    first, second = big_store
    newest = list(SyncedMessage.objects.filter(account__in=[first, second]).order_by(F("received_at").desc(nulls_last=True), "-pk")
                  .values_list("pk", flat=True)[25:50])
    assert [message.pk for message in page] == newest


def test_undated_mail_goes_last_and_pages_follow_each_other(user, make_account):
    first, second = make_account(user, "a@firma.example"), make_account(user, "b@firma.example")
    fill(first, 7, undated=2)
    fill(second, 5, undated=1)
    messages = messages_for_user(user)
    assert messages.count() == 15
    whole = [m.pk for m in messages[0:15]]
    assert [m.pk for m in messages[0:4]] + [m.pk for m in messages[4:15]] == whole
    rows = SyncedMessage.objects.in_bulk(whole)
    dates = [rows[pk].received_at for pk in whole]
    assert dates[-3:] == [None, None, None]
    assert dates[:12] == sorted(dates[:12], reverse=True)


def test_the_list_and_the_dashboard_show_the_newest(signed_in, user, make_account):
    fill(make_account(user, "a@firma.example"), 30)
    page = signed_in.get(reverse("message-list")).content.decode()
    assert "Nachricht 29" in page and "Nachricht 4<" not in page
    page = signed_in.get(reverse("message-list") + "?page=2").content.decode()
    assert "Nachricht 4<" in page and "Nachricht 29" not in page
    dashboard = signed_in.get("/").content.decode()
    assert "Nachricht 29" in dashboard and "Nachricht 24" not in dashboard


def test_without_limits_in_a_union_each_account_is_read_on_its_own(user, make_account, monkeypatch):
    # SQLite, the run command's database, refuses LIMIT inside a UNION's parts ("LIMIT/OFFSET not allowed in
    # subqueries of compound statements"): the same page, one query per account.
    first, second = make_account(user, "a@firma.example"), make_account(user, "b@firma.example")
    fill(first, 7, undated=2)
    fill(second, 5, undated=1)
    merged = [m.pk for m in messages_for_user(user)[2:11]]
    monkeypatch.setattr(connection.features, "supports_slicing_ordering_in_compound", False)
    with CaptureQueriesContext(connection) as queries:
        alone = [m.pk for m in messages_for_user(user)[2:11]]
    assert alone == merged and len(merged) == 9
    assert not any("UNION" in query["sql"] for query in queries.captured_queries)
    assert len(queries.captured_queries) == 4  # the accounts, each account's head, the page's rows


def test_the_dashboard_of_a_user_with_two_accounts_works_on_sqlite(tmp_path):
    """The embedded default is SQLite, which refuses LIMIT inside UNION ALL: the demo user's dashboard
    (two accounts) answered 500 there. Real SQLite in a subprocess (the test database is PostgreSQL)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = (
        "import django; django.setup()\n"
        "from django.core.management import call_command; call_command('migrate', verbosity=0)\n"
        "from datetime import datetime, timedelta, timezone\n"
        "from django.contrib.auth import get_user_model\n"
        "from sync.models import MailAccount, SyncedMessage\n"
        "from sync.selectors import messages_for_user\n"
        "user = get_user_model().objects.create_user('u', 'u@example.com', 'x')\n"
        "start = datetime(2025, 1, 1, tzinfo=timezone.utc)\n"
        "for n, address in enumerate(['a@firma.example', 'b@firma.example']):\n"
        "    account = MailAccount.objects.create(owner=user, address=address)\n"
        "    SyncedMessage.objects.bulk_create([SyncedMessage(account=account, dedup_key=f'{address}-{i}',\n"
        "        folder='INBOX', subject=f'{address} {i}', received_at=start + timedelta(minutes=2 * i + n),\n"
        "        imported_by='v3') for i in range(4)])\n"
        "print([m.subject for m in messages_for_user(user)[0:3]])\n"
    )
    env = {**os.environ, "PORTAL_DATA_DIR": str(tmp_path), "CELERY_BROKER_URL": "filesystem://",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}", "DJANGO_SETTINGS_MODULE": "portal.settings"}
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "['b@firma.example 3', 'a@firma.example 3', 'b@firma.example 2']"
