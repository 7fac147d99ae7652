"""The embedded default (SQLite, one file shared by the web process and the worker) takes a double click as
PostgreSQL does: every click lands on the one migration, none answers 500.

SQLite starts a transaction as a reader; two transactions that both read and then write deadlock, and SQLite
fails one of them at once with "database is locked" instead of waiting (its busy timeout does not apply to a
lock upgrade). Real SQLite in a subprocess (the test database is PostgreSQL)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import threading
import django
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()  # the test client's host name
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import reverse
from migration.models import Migration
from migration.selectors import current_campaign
from sync.models import MailAccount

user = get_user_model().objects.create_user("anna", "anna@gmx.de", "x")
account = MailAccount.objects.create(owner=user, address="anna@gmx.de", engine="v2")
current_campaign()
CLICKS = 6
barrier = threading.Barrier(CLICKS)
answers = []

def click():
    client = Client()
    client.force_login(user)
    try:
        barrier.wait()
        response = client.post(reverse("migration-start", args=[account.pk]))
        answers.append((str(response.status_code), response.get("Location", "")))
    except Exception as error:
        answers.append((type(error).__name__, str(error)))
    finally:
        connection.close()

for _ in range(%(rounds)d):
    Migration.objects.all().delete()
    answers.clear()
    threads = [threading.Thread(target=click) for _ in range(CLICKS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(sorted(set(answers)), Migration.objects.count())
"""


def test_a_double_click_on_sqlite_lands_every_click_on_one_migration(tmp_path):
    env = {**os.environ, "PORTAL_DATA_DIR": str(tmp_path), "CELERY_BROKER_URL": "memory://",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}", "DJANGO_SETTINGS_MODULE": "portal.settings",
           "REDIS_URL": ""}
    result = subprocess.run([sys.executable, "-c", SCRIPT % {"rounds": 5}], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(rounds) == 5, result.stdout
    for line in rounds:
        answers, count = line.rsplit(" ", 1)
        assert count == "1", line
        # Every click: a redirect to the same migration's page.
        assert answers.count("302") == 1 and "/migration/" in answers and "Error" not in answers, line
