"""Beat's control tasks on their own queue: a fan-out runs while the sync queue is full of slow runs.

Real processes on the session's PostgreSQL and Redis, started the way
scripts/run and docker-compose.yml start them: one sync worker on "celery" and
one control worker on "control". The sync runs go to a mail server that
accepts the connection and never answers, so the sync worker is stuck on its
first run and the rest wait behind it.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from portal.celery import app
from sync import crypto, queue
from sync.models import MailAccount
from tests.conftest import wait_for, worker_environment

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent
SLOW_RUNS = 30


def test_beats_control_tasks_go_to_the_control_queue_and_the_work_to_the_default_one():
    def queue_of(name: str) -> str:
        return app.amqp.router.route({}, name)["queue"].name

    control = {"sync.tasks.sync_all_accounts", "migration.tasks.sweep_stuck_migrations",
               "migration.tasks.send_due_reminders", "sync.tasks.send_reconnect_followups"}
    assert {name for name in control if queue_of(name) == "control"} == control
    for work in ("sync.tasks.sync_account", "migration.tasks.run_migration", "migration.tasks.send_reminder",
                 "sync.tasks.send_reconnect_mail", "migration.microsoft.tasks.poll_admin_consents",
                 "migration.tasks.send_staff_digest"):
        assert queue_of(work) == "celery", work
    # Every task beat sends has a queue some worker consumes.
    app.finalize()  # adds beat's schedule (portal.celery)
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert control <= scheduled
    assert {queue_of(name) for name in scheduled} <= {queue.name for queue in django_settings.CELERY_TASK_QUEUES}


def test_a_worker_started_without_q_consumes_both_queues():
    # The test fixtures' workers (and an operator's plain `celery worker`) leave nothing unconsumed.
    assert set(app.amqp.queues) == {"celery", "control"}


def test_scripts_run_starts_a_worker_for_each_queue():
    script = (ROOT / "scripts" / "run").read_text()
    assert "-Q celery " in script and "-Q control " in script


@pytest.fixture
def silent_server():
    """A mail server that accepts connections and never says a word (each run waits for its greeting)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted, stop = [], threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def _celery(settings, dovecot, log: Path, *arguments) -> subprocess.Popen:
    env = worker_environment(settings, dovecot, MAIL_CONNECT_TIMEOUT="60")
    with open(log, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool=solo", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "--loglevel=INFO", *arguments],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )


def test_a_fan_out_runs_while_the_sync_queue_is_full_of_slow_runs(user, make_account, settings, dovecot,
                                                                   silent_server):
    with app.connection_for_write() as conn:
        redis = conn.default_channel.client
        redis.flushdb()
    slow = [
        make_account(user, f"langsam{n}@firma.example", engine="v3", imap_host="127.0.0.1",
                     imap_port=silent_server, imap_security="ssl", username=f"langsam{n}@firma.example",
                     secret_encrypted=crypto.encrypt_json({"password": "geheim"}))
        for n in range(SLOW_RUNS)
    ]
    for account in slow:
        queue.enqueue_sync(account.pk)
    # Already synced a moment ago and not due: only the fan-out's own mark shows it ran.
    MailAccount.objects.update(sync_due_at=None)
    folder = Path(tempfile.mkdtemp(prefix="control-queue-"))
    workers = [_celery(settings, dovecot, folder / "sync.log", "-Q", "celery", "-n", "sync@%h")]
    try:
        # The sync worker is stuck in its first run (it holds that account's lease), the rest wait.
        wait_for(lambda: MailAccount.objects.filter(sync_lease_token__gt="").exists(), timeout=60)
        assert redis.llen("celery") >= SLOW_RUNS - 2
        workers.append(_celery(settings, dovecot, folder / "control.log", "-Q", "control", "-n", "control@%h"))
        app.send_task("sync.tasks.sync_all_accounts")  # as beat sends it
        # The fan-out ran: it marked the due accounts queued, while the sync worker is still on its first run.
        wait_for(lambda: MailAccount.objects.filter(sync_queued_at__isnull=False).exists(), timeout=60)
        assert MailAccount.objects.filter(sync_lease_token__gt="").count() == 1
        assert MailAccount.objects.filter(last_sync_at__isnull=False, last_sync_error="").count() == 0
        received = "Task sync.tasks.sync_all_accounts["
        assert received not in (folder / "sync.log").read_text(errors="replace")
        assert received in (folder / "control.log").read_text(errors="replace")
    finally:
        for process in workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        redis.flushdb()
