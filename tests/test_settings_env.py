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
    ("SYNC_LEASE_SECONDS", "1"),
    ("CAMPAIGN_MIGRATE_BY", "18.07.2025"),
    ("ACCOUNT_ALLOW_SIGNUP", "ja"),
    # egress guard and detection
    ("EGRESS_ALLOW_NETWORKS", "127.0.0.1/33"),
    ("EGRESS_ALLOW_NETWORKS", "10.0.0.0/8,intranet"),
    ("EGRESS_RATE_PER_USER", "0"),
    ("EGRESS_RATE_PER_DESTINATION", "viele"),
    ("DNS_NAMESERVERS", "dns.example.com"),
    ("DNS_NAMESERVERS", "127.0.0.1:99999"),
    ("DNS_TIMEOUT", "0"),
    ("DETECTION_HTTP_LOOKUPS", "vielleicht"),
    ("DETECTION_HTTP_TIMEOUT", "kurz"),
    ("DETECTION_CACHE_SECONDS", "-1"),
    ("EGRESS_HTTP_MAX_SECONDS", "0"),
    # byte and time caps
    ("IMAP_MAX_MESSAGE_BYTES", "1000"),
    ("IMAP_MAX_MESSAGE_BYTES", "25MB"),
    ("IMAP_COMMAND_MAX_SECONDS", "0"),
    ("MS_MAX_RESPONSE_BYTES", "100"),
    ("MS_MAX_RESPONSE_SECONDS", "lang"),
    ("ISPDB_URL", "file:///etc/ispdb/"),
    # Microsoft
    ("MS_AUTHORITY", "http://login.microsoftonline.com/organizations"),
    ("MS_AUTHORITY", "https://login.microsoftonline.com"),
    ("MS_GRAPH_URL", "graph.microsoft.com"),
    ("MS_INSTANCE_DISCOVERY", "vielleicht"),
    ("MS_CA_FILE", "/nonexistent/ca.pem"),
    ("MS_TIMEOUT", "0"),
    ("MS_ADMIN_LINK_DAYS", "bald"),
    # production hardening
    ("ENCRYPTION_KEYS", "z"),
    ("ENCRYPTION_KEYS", "dGhpcyBpcyBub3QgYSBrZXk="),
    ("BEHIND_TLS_PROXY", "ja"),
    ("TRUSTED_PROXY_COUNT", "-1"),
    ("SECURE_HSTS_SECONDS", "ein Jahr"),
    ("LOGIN_FAILURE_LIMIT", "0"),
    ("LOGIN_LOCKOUT_MINUTES", "bald"),
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


def test_it_refuses_a_bad_encryption_key_among_good_ones_without_echoing_it(tmp_path):
    from cryptography.fernet import Fernet

    good, bad = Fernet.generate_key().decode(), "Sehr-Geheim-aber-kein-Schluessel"
    result = _start(ENCRYPTION_KEYS=f"{good},{bad}", PORTAL_DATA_DIR=str(tmp_path))
    assert result.returncode != 0 and "ENCRYPTION_KEYS: key 2 of 2" in result.stderr
    assert bad not in result.stderr and good not in result.stderr


def test_it_requires_encryption_keys_in_production_and_makes_no_key_file(tmp_path):
    result = _start(PORTAL_REQUIRE_SECRETS="true", SECRET_KEY="x" * 50, PORTAL_DATA_DIR=str(tmp_path))
    assert result.returncode != 0 and "ENCRYPTION_KEYS" in result.stderr
    assert not (tmp_path / "encryption.key").exists()


def test_the_worker_stops_on_a_bad_encryption_key_too(tmp_path):
    # The worker reads the same settings: it must not start and fail on its first task.
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL")}
    clean.update(ENCRYPTION_KEYS="kaputt", PORTAL_DATA_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "portal", "report"], cwd=ROOT,
                            env=clean, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "ENCRYPTION_KEYS" in result.stderr
