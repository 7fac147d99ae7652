"""Two beat processes by mistake: the mailboxes see the logins of one.

Real processes on the session's PostgreSQL and Redis: one worker and two
`celery beat` with the shortest fan-out interval. Logins are counted where
they happen, in the real Dovecot's log; fan-outs in the beats' own logs.
Without the fan-out's next-due claim, every fan-out of either beat queued
every account whose last run had ended: twice the logins.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from portal.celery import app
from sync import crypto, leases
from sync.models import MailAccount
from sync.runs import accounts_to_sync
from tests.conftest import wait_for, worker_environment

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent
INTERVAL = 5  # SYNC_INTERVAL_SECONDS: the smallest the settings allow
FAN_OUTS = 10  # what both beats send together before they are stopped


def _logins(dovecot, address: str) -> int:
    log = (dovecot.base / "dovecot.log").read_text(errors="replace")
    return len(re.findall(rf"imap-login: Info: Login: user=<{re.escape(address)}>", log))


def _fan_outs(*logs: Path) -> int:
    return sum(path.read_text(errors="replace").count("(sync.tasks.sync_all_accounts)") for path in logs)


def _celery(settings, dovecot, log: Path, *arguments) -> subprocess.Popen:
    # The adaptive interval held at the base: a fixed cadence to count logins against.
    env = worker_environment(settings, dovecot, SYNC_INTERVAL_SECONDS=str(INTERVAL),
                             SYNC_INTERVAL_MIN_SECONDS=str(INTERVAL), SYNC_INTERVAL_MAX_SECONDS=str(INTERVAL))
    with open(log, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", *arguments, "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _stop(*processes) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        if process is not None:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.fixture
def accounts(user, make_account, dovecot, mail_settings):
    """Three V2 accounts on the real Dovecot, each with its own mailbox."""
    made = []
    for _ in range(3):
        address, password = dovecot.take_mailbox()
        made.append(make_account(user, address, imap_host="127.0.0.1", imap_port=dovecot.tls_port,
                                 imap_security="ssl", username=address,
                                 secret_encrypted=crypto.encrypt_json({"password": password})))
    return made


def test_two_beats_log_in_to_each_mailbox_as_often_as_one(accounts, settings, dovecot):
    with app.connection_for_write() as conn:
        redis = conn.default_channel.client
        redis.flushdb()
    folder = Path(tempfile.mkdtemp(prefix="two-beats-"))
    before = {a.address: _logins(dovecot, a.address) for a in accounts}
    worker = _celery(settings, dovecot, folder / "worker.log", "worker", "--pool=solo", "--without-gossip",
                     "--without-mingle", "--without-heartbeat")
    beats = []
    try:
        wait_for(lambda: len(app.control.ping(timeout=0.5)) == 1, timeout=60)
        for name in ("eins", "zwei"):
            beats.append(_celery(settings, dovecot, folder / f"beat-{name}.log", "beat", "--schedule",
                                 str(folder / f"schedule-{name}")))
        beat_logs = [folder / "beat-eins.log", folder / "beat-zwei.log"]
        wait_for(lambda: _fan_outs(*beat_logs) >= FAN_OUTS, timeout=120, interval=0.2)
        _stop(*beats)
        fan_outs = _fan_outs(*beat_logs)
        assert all(path.read_text().count("(sync.tasks.sync_all_accounts)") >= 3 for path in beat_logs)  # both beat
        wait_for(lambda: redis.llen("celery") == 0 and redis.hlen("unacked") == 0, timeout=60)
    finally:
        _stop(*beats, worker)
    logins = {a.address: _logins(dovecot, a.address) - before[a.address] for a in accounts}
    # One beat's fan-outs are half of them; one login per account per fan-out of one beat, plus
    # one for a fan-out the other beat sent just before the first one's next tick.
    most = -(-fan_outs // 2) + 1
    assert all(2 <= count <= most for count in logins.values()), (logins, fan_outs)
    assert all(MailAccount.objects.get(pk=a.pk).last_sync_error == "" for a in accounts)


def test_a_second_fan_out_in_the_same_interval_queues_nothing(accounts, settings):
    # The same as two beats, without waiting: the first fan-out's runs have ended
    # (leases released, queued marks cleared) when the second beat's tick comes.
    first = accounts_to_sync()
    assert sorted(first) == sorted(a.pk for a in accounts)
    MailAccount.objects.update(sync_queued_at=None, sync_lease_until=timezone.now())  # the runs are over
    assert accounts_to_sync() == []
    # The next interval: due again, once.
    MailAccount.objects.update(sync_due_at=timezone.now() - timedelta(seconds=1))
    assert sorted(accounts_to_sync()) == sorted(first)
    due = MailAccount.objects.get(pk=accounts[0].pk).sync_due_at
    expected = settings.SYNC_INTERVAL_MIN_SECONDS * leases.DUE_FRACTION  # until the run sets its own
    assert expected - 5 < (due - timezone.now()).total_seconds() <= expected
