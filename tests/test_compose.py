"""docker-compose.yml: the services production needs, in a schema compose accepts."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def test_it_defines_web_worker_beat_postgres_and_redis():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert set(services) == {"web", "worker", "beat", "db", "redis"}
    assert "gunicorn" in services["web"]["command"]
    assert "worker" in services["worker"]["command"]
    assert "beat" in services["beat"]["command"]
    assert services["db"]["image"].startswith("postgres")
    assert services["redis"]["image"].startswith("redis")
    for name in ("web", "worker", "beat"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")
        assert "ENCRYPTION_KEYS" in env and "SECRET_KEY" in env


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed")
def test_it_passes_docker_compose_config():
    env = dict(os.environ, POSTGRES_PASSWORD="x", SECRET_KEY="y", ENCRYPTION_KEYS="z")
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
