"""Bad environment values stop start-up and name the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _start(**env):
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL")}
    clean.update(env, DJANGO_SETTINGS_MODULE="portal.settings")
    return subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=clean,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name, value", [
    ("DEBUG", "maybe"),
    ("DATABASE_URL", "mysql://x/y"),
    ("DATABASE_URL", "postgres://host:5432/"),
    ("MAIL_CONNECT_TIMEOUT", "soon"),
    ("HANDOFF_OVERLAP_HOURS", "-1"),
    ("CAMPAIGN_MIGRATE_BY", "18.07.2025"),
    ("ACCOUNT_ALLOW_SIGNUP", "ja"),
])
def test_it_names_the_bad_variable(name, value, tmp_path):
    result = _start(**{name: value, "PORTAL_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert name in result.stderr


def test_it_refuses_a_shutdown_before_the_deadline(tmp_path):
    result = _start(CAMPAIGN_MIGRATE_BY="2025-08-01", CAMPAIGN_V2_SHUTDOWN="2025-07-01", PORTAL_DATA_DIR=str(tmp_path))
    assert "CAMPAIGN_V2_SHUTDOWN" in result.stderr


def test_it_never_echoes_a_database_password(tmp_path):
    result = _start(DATABASE_URL="mysql://admin:TopSecret99@db/x", PORTAL_DATA_DIR=str(tmp_path))
    assert result.returncode != 0 and "TopSecret99" not in result.stderr


def test_it_starts_on_embedded_defaults(tmp_path):
    result = _start(PORTAL_DATA_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr


def test_it_requires_secrets_in_production(tmp_path):
    result = _start(PORTAL_REQUIRE_SECRETS="true", PORTAL_DATA_DIR=str(tmp_path))
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr
