"""Production as docker-compose runs it: `check --deploy` is clean, and a real gunicorn behind the
(simulated) TLS proxy sends the security headers, secure cookies and counts logins per real client."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from axes.models import AccessAttempt
from cryptography.fernet import Fernet
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

from portal.devservers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")
HOST = "crm.example.com"


def dotenv() -> dict:
    """What an operator puts in .env next to docker-compose.yml (README "Deploying")."""
    return {"POSTGRES_PASSWORD": "pg-" + secrets.token_hex(8), "SECRET_KEY": secrets.token_urlsafe(50),
            "ENCRYPTION_KEYS": Fernet.generate_key().decode(), "ALLOWED_HOSTS": HOST, "SITE_URL": f"https://{HOST}"}


def compose_environment(service: str = "web", **given) -> dict:
    """The service's environment as docker compose passes it, `given` being the .env file."""
    def expand(value) -> str:
        def one(match):
            name, kind, default = match.groups()
            if given.get(name):
                return given[name]
            assert kind != "?", f"docker-compose.yml requires {name}"
            return default or ""
        return VARIABLE.sub(one, str(value))

    environment = yaml.safe_load(COMPOSE.read_text())["services"][service]["environment"]
    return {name: expand(value) for name, value in environment.items()}


def run_manage(env: dict, *args) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "portal.settings", **env}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("service", ["web", "worker", "beat"])
def test_check_deploy_is_clean_with_the_compose_environment(service, tmp_path):
    env = {**compose_environment(service, **dotenv()), "PORTAL_DATA_DIR": str(tmp_path)}
    result = run_manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert not (tmp_path / "encryption.key").exists()


def test_the_embedded_default_stays_plain_http(tmp_path):
    # ./scripts/run serves http on 127.0.0.1: no redirect to https, no Secure-only cookies, no HSTS.
    result = run_manage({"PORTAL_DATA_DIR": str(tmp_path)}, "shell", "-v", "0", "-c", (
        "from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, "
        "s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_PROXY_SSL_HEADER, s.ALLAUTH_TRUSTED_PROXY_COUNT)"))
    assert result.stdout.split() == ["False", "False", "False", "0", "None", "0"], result.stderr


# --- a real gunicorn -----------------------------------------------------------------------------------

LIMIT = 3  # LOGIN_FAILURE_LIMIT for this server: fewer PBKDF2 rounds on a slow machine
PASSWORD = "Richtig-Passwort-7"
CLIENT = "203.0.113.50"  # what the proxy appends to X-Forwarded-For


@pytest.fixture
def gunicorn(transactional_db, tmp_path, django_user_model):
    for email in ("support@example.com", "anna@example.com"):
        # The server checks with Django's default hashers; few rounds keep the test fast.
        django_user_model.objects.create(username=email, email=email, password=PBKDF2PasswordHasher().encode(
            PASSWORD, "salzsalzsalz", iterations=1000))
    db = connection.settings_dict
    env = {
        "PATH": os.environ["PATH"],
        **compose_environment("web", **dotenv()),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": os.environ["REDIS_URL"], "CELERY_BROKER_URL": os.environ["REDIS_URL"],
        "PORTAL_DATA_DIR": str(tmp_path), "LOGIN_FAILURE_LIMIT": str(LIMIT),
    }
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "portal.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", "1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)
        log.close()


def through_proxy(client: str = CLIENT, **headers) -> dict:
    """The headers the TLS proxy adds (README "Deploying"): Host, X-Forwarded-Proto, X-Forwarded-For."""
    forwarded = f"{headers.pop('spoofed')}, {client}" if "spoofed" in headers else client
    return {"Host": HOST, "X-Forwarded-Proto": "https", "X-Forwarded-For": forwarded, **headers}


def login(base: str, email: str, password: str, **proxy) -> requests.Response:
    page = requests.get(f"{base}/accounts/login/", headers=through_proxy(**proxy), timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    # requests keeps Secure cookies from http:// URLs: the proxy's https leg is simulated by hand.
    headers = through_proxy(**proxy, Cookie=f"csrftoken={page.cookies['csrftoken']}",
                            Origin=f"https://{HOST}", Referer=f"https://{HOST}/accounts/login/")
    return requests.post(f"{base}/accounts/login/", data={"login": email, "password": password,
                         "csrfmiddlewaretoken": token}, headers=headers, allow_redirects=False, timeout=30)


def test_gunicorn_sends_the_security_headers(gunicorn):
    response = requests.get(f"{gunicorn}/accounts/login/", headers=through_proxy(), allow_redirects=False,
                            timeout=30)
    assert response.status_code == 200
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    policy = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == policy["script-src"] == policy["style-src"] == "'self'"
    assert policy["object-src"] == policy["frame-ancestors"] == policy["base-uri"] == "'none'"
    assert policy["form-action"] == "'self' https://login.microsoftonline.com https://accounts.google.com"
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    permissions = response.headers["Permissions-Policy"]
    assert "camera=()" in permissions and "geolocation=()" in permissions and "microphone=()" in permissions
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "; Secure" in response.headers["Set-Cookie"] and "csrftoken=" in response.headers["Set-Cookie"]


def test_gunicorn_redirects_plain_http_but_not_the_health_check(gunicorn):
    response = requests.get(f"{gunicorn}/accounts/login/", headers={"Host": HOST}, allow_redirects=False,
                            timeout=30)
    assert response.status_code == 301 and response.headers["Location"] == f"https://{HOST}/accounts/login/"
    health = requests.get(f"{gunicorn}/health/", headers={"Host": HOST}, allow_redirects=False, timeout=30)
    assert health.status_code not in (301, 302)


def test_gunicorn_counts_failures_per_client_address_from_the_proxy(gunicorn):
    for attempt in range(LIMIT - 1):
        # The left part of X-Forwarded-For is whatever the client sent: never trusted.
        response = login(gunicorn, "support@example.com", f"falsch-{attempt}", spoofed=f"10.0.0.{attempt}")
        assert response.status_code == 200
    response = login(gunicorn, "support@example.com", "falsch")
    assert response.status_code == 429
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {CLIENT}

    assert login(gunicorn, "support@example.com", PASSWORD).status_code == 429  # the address is locked
    assert login(gunicorn, "support@example.com", PASSWORD, client="203.0.113.51").status_code == 429  # the account
    other = login(gunicorn, "anna@example.com", PASSWORD, client="203.0.113.51")
    assert other.status_code == 302
    cookie = [c for c in other.raw.headers.getlist("Set-Cookie") if c.startswith("sessionid=")][0]
    assert "; Secure" in cookie and "; HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_the_web_health_check_of_compose_passes_against_gunicorn(gunicorn):
    # Production's ALLOWED_HOSTS names the public host only: a check that asks by 127.0.0.1 would get 400
    # (DisallowedHost) and compose would call a healthy web unhealthy.
    command = yaml.safe_load(COMPOSE.read_text())["services"]["web"]["healthcheck"]["test"]
    assert command[:2] == ["CMD", "python"]
    args = [sys.executable] + [part.replace("127.0.0.1:8000", gunicorn.removeprefix("http://")) for part in command[2:]]
    env = {"PATH": os.environ["PATH"], **compose_environment("web", **dotenv())}
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-500:]
