"""A worker killed in the middle of a migration: the sweeper re-queues, a new worker finishes."""

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import connection

from migration import services, steps
from migration.models import Migration, MigrationEvent
from sync.imap.client import ImapSettings
from tests.conftest import wait_for, worker_environment

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


class SlowProxy:
    """Waits before forwarding a connection to Dovecot: a slow mail server."""

    def __init__(self, target_port: int, delay: float):
        self.target_port, self.delay = target_port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        if self.stop.wait(self.delay):
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.listener.close()


def _worker(settings, dovecot):
    env = worker_environment(settings, dovecot)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool=solo", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "--loglevel=WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def test_it_finishes_a_migration_whose_worker_was_killed(user, imap_account, dovecot, mailbox, mail_settings):
    from portal.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()
    proxy = SlowProxy(dovecot.tls_port, delay=4)
    migration = services.start_migration(user=user, account=imap_account)
    steps.run_migration(migration.pk)  # detection; the queued copy finds nothing to do
    services.submit_imap_credentials(
        migration=Migration.objects.get(pk=migration.pk), password=mailbox[1], actor="test",
        server=ImapSettings("127.0.0.1", proxy.port, "ssl", mailbox[0]),
    )
    first = _worker(mail_settings, dovecot)
    second = None
    try:
        # The worker is inside "verifying", waiting for the slow server: kill it hard.
        wait_for(lambda: proxy.accepted > 0, timeout=30)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        assert Migration.objects.get(pk=migration.pk).status == "verifying"
        # With acks_late the broker would redeliver only after its visibility
        # timeout (an hour); the database sweeper brings it back right away.
        Migration.objects.filter(pk=migration.pk).update(updated_at=migration.updated_at.replace(year=2000))
        assert services.sweep_stuck_migrations() == [migration.pk]
        proxy.delay = 0
        second = _worker(mail_settings, dovecot)
        wait_for(lambda: Migration.objects.get(pk=migration.pk).status == "done", timeout=60)
    finally:
        for process in (first, second):
            if process and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(20)
        proxy.close()
    imap_account.refresh_from_db()
    assert imap_account.engine == "v3"
    assert MigrationEvent.objects.filter(migration=migration, to_status="done").count() == 1
