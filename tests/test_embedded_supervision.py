"""The embedded default (./scripts/run): children that come back, and a data folder it cannot write."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from portal.devservers import free_port
from portal.supervise import Supervisor
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _imap_greets(port: int) -> bool:
    """Does an IMAP server answer on 127.0.0.1:port with its greeting (RFC 9051 7.1.1: "* OK")?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(5)
            return sock.recv(64).startswith(b"* OK")
    except OSError:
        return False


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def test_it_brings_the_demo_mail_server_back_after_dovecot_dies_and_stops_it_on_sigterm():
    data = Path(tempfile.mkdtemp(prefix="demo-data-"))
    data.chmod(0o755)  # Dovecot's unprivileged processes traverse it
    port, tls_port = free_port(), free_port()
    master_pid = data / "demo-mail" / "run" / "master.pid"
    log = data / "demo-mail.log"
    env = {**os.environ, "PORTAL_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1",
           "MAIL_TLS_CA_FILE": str(data / "demo-mail" / "cert.pem")}
    with log.open("ab") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "portal.supervise", "--name", "demo mail server", "--initial-delay", "0.2", "--",
             sys.executable, "manage.py", "demo_mailserver", "--port", str(port), "--tls-port", str(tls_port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for(lambda: _imap_greets(port), timeout=60)
        first = _pid_in(master_pid)
        os.kill(first, signal.SIGKILL)  # Dovecot dies (a full disk, the OOM killer)

        wait_for(lambda: _pid_in(master_pid) not in (None, first) and _imap_greets(port), timeout=60)
        assert "demo mail server exited with code 1; restart 1 in 0.2 s" in log.read_text()
        assert supervisor.poll() is None

        supervisor.terminate()  # what scripts/run's cleanup sends
        assert supervisor.wait(30) == 0, log.read_text()
        assert not _imap_greets(port)  # Dovecot went with it
        assert log.read_text().count("restart ") == 1  # a stop is not a crash: no restart
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(10)
        pid = _pid_in(master_pid)
        if pid:  # a failed test must not leave a Dovecot behind (it runs in its own session)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(data, ignore_errors=True)


def test_it_backs_off_doubling_up_to_the_limit_between_restarts():
    lines = []

    def log(line):
        lines.append(line)
        if len(lines) == 5:
            supervisor.stop()

    supervisor = Supervisor([sys.executable, "-c", "raise SystemExit(3)"], name="crasher", initial_delay=0.01,
                            max_delay=0.04, stable_after=3600, log=log)
    assert supervisor.run() == 0
    assert lines == [
        "crasher exited with code 3; restart 1 in 0.01 s",
        "crasher exited with code 3; restart 2 in 0.02 s",
        "crasher exited with code 3; restart 3 in 0.04 s",
        "crasher exited with code 3; restart 4 in 0.04 s",
        "crasher exited with code 3; restart 5 in 0.04 s",
    ]


def test_it_starts_the_back_off_over_after_a_child_that_ran_long_enough():
    lines = []

    def log(line):
        lines.append(line)
        if len(lines) == 3:
            supervisor.stop()

    # Each run lasts at least 0.3 s, longer than stable_after: every exit is a new incident.
    supervisor = Supervisor([sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(1)"],
                            name="flaky", initial_delay=0.01, max_delay=1, stable_after=0.2, log=log)
    supervisor.run()
    assert [line.rsplit(" in ", 1)[1] for line in lines] == ["0.01 s", "0.01 s", "0.01 s"]


def test_it_stops_what_a_dead_child_left_behind_before_starting_it_again(tmp_path):
    # Like a worker killed with -B: its embedded beat would live on next to the new worker's.
    pid_file = tmp_path / "grandchild.pid"
    child = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); raise SystemExit(1)")
    lines, grandchildren = [], []

    def log(line):
        lines.append(line)
        if "restart" in line:
            grandchildren.append(int(pid_file.read_text()))
            supervisor.stop()

    supervisor = Supervisor([sys.executable, "-c", child], name="worker", initial_delay=0.01, stop_timeout=10,
                            log=log)
    supervisor.run()
    assert lines == ["worker left processes behind: stopping them", "worker exited with code 1; restart 1 in 0.01 s"]
    assert not _running(grandchildren[0])


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has stopped; only its parent's wait() is missing


def test_it_keeps_trying_when_the_command_cannot_be_started():
    lines = []

    def log(line):
        lines.append(line)
        if len(lines) == 4:
            supervisor.stop()

    supervisor = Supervisor(["/nonexistent/demo-mail-server"], name="missing", initial_delay=0.01, log=log)
    supervisor.run()
    assert lines[0] == "missing could not be started: No such file or directory"
    assert lines[1] == "missing exited with code None; restart 1 in 0.01 s"


@pytest.fixture
def regular_file():
    handle, path = tempfile.mkstemp(prefix="not-a-folder-")
    os.close(handle)
    yield Path(path)
    os.unlink(path)


@pytest.mark.parametrize("where", ["inside_a_file", "is_a_file"])
def test_run_refuses_a_data_folder_it_cannot_write_in_one_line_naming_the_setting(regular_file, where):
    # As root no permission bit stops a write: a path below a regular file fails as a read-only mount does.
    data_dir = regular_file / "data" if where == "inside_a_file" else regular_file
    result = subprocess.run(["bash", "scripts/run"], cwd=ROOT, env={**os.environ, "PORTAL_DATA_DIR": str(data_dir)},
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert result.stdout == ""  # stopped before installing or starting anything
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"PORTAL_DATA_DIR={data_dir} is not a writable folder")


def test_the_embedded_broker_keeps_all_its_files_in_the_data_folder(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "cwd"
    elsewhere.mkdir()
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import django; django.setup(); "
              "from portal.celery import app; app.control.ping(timeout=0.1)")  # remote control: an exchange table
    env = {**os.environ, "PORTAL_DATA_DIR": str(data), "CELERY_BROKER_URL": "filesystem://",
           "DATABASE_URL": f"sqlite:///{data / 'portal.sqlite3'}"}
    subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, check=True, timeout=60)
    assert list(elsewhere.iterdir()) == []  # nothing in the working directory (kombu's default ./control)
    assert [path.suffix for path in (data / "broker" / "control").iterdir()] == [".exchange"]
