"""docker-compose.yml: the services production needs, in a schema compose accepts."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def test_it_defines_web_worker_beat_postgres_and_redis():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(services) == {"web", "worker", "control-worker", "beat", "imap-idle", "db", "redis"}
    assert "imap_idle" in services["imap-idle"]["command"]
    assert "gunicorn" in services["web"]["command"]
    assert "worker" in services["worker"]["command"]
    assert "beat" in services["beat"]["command"]
    assert services["db"]["image"].startswith("postgres")
    assert services["redis"]["image"].startswith("redis")
    for name in ("web", "worker", "control-worker", "beat", "imap-idle"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")
        assert "ENCRYPTION_KEYS" in env and "SECRET_KEY" in env


def test_every_queue_has_a_worker_and_control_work_has_its_own():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    queues = {name: services[name]["command"].split("-Q ")[1].split()[0].split(",")
              for name in ("worker", "control-worker")}
    assert queues == {"worker": ["celery"], "control-worker": ["control"]}
    assert "--concurrency=1" in services["control-worker"]["command"]


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed")
def test_it_passes_docker_compose_config():
    env = dict(os.environ, POSTGRES_PASSWORD="x", SECRET_KEY="y", ENCRYPTION_KEYS="z")
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


LONG_RUNNING = ("web", "worker", "control-worker", "beat", "imap-idle", "db", "redis")


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_it_restarts_every_long_running_service_and_checks_its_health(name):
    service = yaml.safe_load(COMPOSE.read_text())["services"][name]
    assert service["restart"] in {"unless-stopped", "on-failure", "always"}
    check = service["healthcheck"]
    assert check["test"][0] in {"CMD", "CMD-SHELL"} and len(check["test"]) > 1
    assert check.get("disable") is not True


def test_it_checks_each_service_by_what_shows_it_works():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    command = {name: " ".join(service["healthcheck"]["test"][1:]) for name, service in services.items()}
    assert "/health/" in command["web"]
    assert "WORKER_HEARTBEAT_FILE" in command["worker"] and services["worker"]["environment"]["WORKER_HEARTBEAT_FILE"]
    assert "BEAT_TICK_FILE" in command["beat"] and services["beat"]["environment"]["BEAT_TICK_FILE"]
    assert "IMAP_IDLE_HEARTBEAT_FILE" in command["imap-idle"] \
        and services["imap-idle"]["environment"]["IMAP_IDLE_HEARTBEAT_FILE"]
    assert command["db"].startswith("pg_isready")
    assert command["redis"] == "redis-cli ping"
    # The app waits for healthy dependencies instead of crashing into a starting database.
    for name in ("web", "worker", "control-worker", "beat", "imap-idle"):
        assert {dependency: condition["condition"] for dependency, condition in services[name]["depends_on"].items()} \
            == {"db": "service_healthy", "redis": "service_healthy"}


@pytest.mark.parametrize("name, variable", [("worker", "WORKER_HEARTBEAT_FILE"),
                                           ("control-worker", "WORKER_HEARTBEAT_FILE"), ("beat", "BEAT_TICK_FILE"),
                                           ("imap-idle", "IMAP_IDLE_HEARTBEAT_FILE")])
def test_its_heartbeat_checks_pass_on_a_fresh_file_and_fail_on_an_old_or_missing_one(name, variable, tmp_path):
    test = yaml.safe_load(COMPOSE.read_text())["services"][name]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    heartbeat = tmp_path / "heartbeat"

    def check() -> int:
        # The exact command compose runs in the container, with its variable pointing here.
        return subprocess.run([sys.executable, *test[2:]], env={**os.environ, variable: str(heartbeat)},
                              timeout=30).returncode

    assert check() != 0  # never written: the process never got going
    heartbeat.touch()
    assert check() == 0
    old = time.time() - 600
    os.utime(heartbeat, (old, old))  # ten minutes without a heartbeat
    assert check() != 0
