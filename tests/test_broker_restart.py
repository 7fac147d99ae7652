"""Redis (broker and cache) killed and restarted while a real worker runs a migration.

The production-shaped worker (`celery -A portal worker`, prefork pool, gossip,
mingle and heartbeats on, as docker-compose runs it) must survive the outage:
it finishes the migration it was running (or gets it again and finishes it
once) and then takes the next one. With celery/kombu 5.7.0 the worker exited
for good here, 3 of 3 runs (kombu's unacked restore on the closed connection
raised AttributeError: 'NoneType' object has no attribute 'hostname'); 5.6
and 5.5 passed. pyproject pins the minors this test passed with.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu import Connection

from migration import services, steps
from migration.models import Migration, MigrationEvent
from migration.tasks import run_migration
from portal.celery import app
from portal.devservers import Redis
from sync import crypto
from sync.imap.client import ImapSettings
from tests.conftest import wait_for, worker_environment
from tests.test_worker_killed import SlowProxy

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker():
    """A Redis of this test's own (the session's must stay up), append-only like production's."""
    server = Redis(appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture
def publish_to(monkeypatch):
    """Send the test process's run_migration tasks to the given broker instead of the session's."""
    target = {}

    def delay(migration_id):
        with Connection(target["url"]) as connection:
            app.send_task(run_migration.name, args=[migration_id], connection=connection)

    monkeypatch.setattr(run_migration, "delay", delay)
    return target


def _worker(settings, dovecot, broker_url: str, log: Path) -> subprocess.Popen:
    env = worker_environment(settings, dovecot, CELERY_BROKER_URL=broker_url, REDIS_URL=broker_url)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "worker", "--concurrency=4", "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _migration_waiting_for_the_worker(user, account, password, server: ImapSettings) -> Migration:
    migration = services.start_migration(user=user, account=account)
    steps.run_migration(migration.pk)  # detection here; the queued copy finds nothing to do
    return services.submit_imap_credentials(
        migration=Migration.objects.get(pk=migration.pk), password=password, actor="test", server=server,
    )


def test_it_finishes_the_running_migration_and_takes_the_next_after_a_redis_restart(
    user, imap_account, make_account, dovecot, mailbox, mail_settings, broker, publish_to, tmp_path,
):
    publish_to["url"] = broker.url
    proxy = SlowProxy(dovecot.tls_port, delay=4)
    log = tmp_path / "worker.log"
    worker = _worker(mail_settings, dovecot, broker.url, log)
    try:
        first = _migration_waiting_for_the_worker(
            user, imap_account, mailbox[1], ImapSettings("127.0.0.1", proxy.port, "ssl", mailbox[0]))
        # The worker is inside "verifying", waiting for the slow mail server: Redis crashes and comes back.
        wait_for(lambda: proxy.accepted > 0, timeout=30)
        broker.kill()
        time.sleep(1)  # an outage the worker notices (its connection breaks), not a blip
        broker.start()
        _wait_until_done(first, worker, log)

        # The worker keeps consuming: the next migration is taken and finished too.
        address, password = dovecot.take_mailbox()
        account = make_account(user, address, imap_host="127.0.0.1", imap_port=dovecot.tls_port,
                               imap_security="ssl", username=address,
                               secret_encrypted=crypto.encrypt_json({"password": password}))
        proxy.delay = 0
        second = _migration_waiting_for_the_worker(
            user, account, password, ImapSettings("127.0.0.1", proxy.port, "ssl", address))
        _wait_until_done(second, worker, log)
        assert worker.poll() is None, log.read_text()
    finally:
        _stop(worker)
        proxy.close()
    for migration in (first, second):
        assert MigrationEvent.objects.filter(migration=migration, to_status="done").count() == 1
    assert "Unrecoverable error" not in log.read_text()


def _wait_until_done(migration: Migration, worker: subprocess.Popen, log: Path) -> None:
    def done():
        assert worker.poll() is None, f"the worker exited:\n{log.read_text()}"
        return Migration.objects.get(pk=migration.pk).status == "done"

    wait_for(done, timeout=90)


def _stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.terminate()  # a warm shutdown: the main process stops its pool
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(worker.pid, signal.SIGKILL)  # whatever is left of its process group
    except ProcessLookupError:
        pass
    worker.wait(10)
