"""The banner under the embedded default: web and a separate worker process share one cache.

The test session itself runs on Redis (servers_plugin sets REDIS_URL). Here the test process and the
worker both take the cache the settings give when REDIS_URL is unset, the way ./scripts/run starts
them, so the worker's invalidation must reach the page this process renders next.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.urls import reverse

from migration import services, steps
from migration.models import Migration
from sync.imap.client import ImapSettings
from tests.conftest import wait_for, worker_environment

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent
BANNER = 'data-testid="v2-banner"'


def _embedded_environment(settings, dovecot, data_dir: str) -> dict:
    env = worker_environment(settings, dovecot, PORTAL_DATA_DIR=data_dir)
    env.pop("REDIS_URL", None)  # the broker stays Redis (CELERY_BROKER_URL); only the cache is the default's
    return env


def _embedded_cache_settings(env: dict) -> dict:
    """CACHES["default"] as portal/settings.py computes it without REDIS_URL, read in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", "import json, django; django.setup(); from django.conf import settings; "
                               "print(json.dumps(settings.CACHES['default']))"],
        cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "portal.settings"}, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _banner_of(client) -> str:
    html = client.get(reverse("dashboard")).content.decode()
    return html[html.index(BANNER):html.index("</aside>")] if BANNER in html else ""


def test_it_drops_the_banner_line_on_the_next_page_after_a_worker_process_finishes(
    settings, client, user, make_account, imap_account, dovecot, mailbox, mail_settings,
):
    from portal.celery import app

    data_dir = tempfile.mkdtemp(prefix="embedded-cache-")
    env = _embedded_environment(settings, dovecot, data_dir)
    embedded = _embedded_cache_settings(env)
    assert "locmem" not in embedded["BACKEND"]  # per-process memory cannot be shared
    settings.CACHES = {**settings.CACHES, "default": embedded}  # the per-process fragment cache stays
    other = make_account(user, "anna@web.de")  # stays on V2: its line must stay
    client.force_login(user)
    banner = _banner_of(client)
    assert imap_account.address in banner and other.address in banner  # ... and now cached

    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()
    migration = services.start_migration(user=user, account=imap_account)
    steps.run_migration(migration.pk)  # detection here; the worker process does the rest
    services.submit_imap_credentials(
        migration=Migration.objects.get(pk=migration.pk), password=mailbox[1], actor="test",
        server=ImapSettings("127.0.0.1", dovecot.tls_port, "ssl", mailbox[0]),
    )
    assert imap_account.address in _banner_of(client)  # still V2 until the worker hands over
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool=solo", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "--loglevel=WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for(lambda: Migration.objects.get(pk=migration.pk).status == "done", timeout=60)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)

    banner = _banner_of(client)  # the very next page
    assert imap_account.address not in banner
    assert other.address in banner
