"""Outgoing mail: SMTP from the environment's settings, and the embedded default that writes files.

The SMTP test talks to a real SMTP server (aiosmtpd, started by the smtp_server
fixture on 127.0.0.1) that requires STARTTLS and a login, and reads the mail
back from what the server received.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from migration import reminders
from migration.models import Reminder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def smtp_settings(settings, smtp_server, monkeypatch):
    port, cert, inbox = smtp_server
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = "portal", "smtp-geheim"
    settings.EMAIL_USE_TLS, settings.EMAIL_USE_SSL = True, False
    settings.DEFAULT_FROM_EMAIL = "crm@firma.example"
    # Django verifies the server's certificate against the default store: the test's own CA is that store here.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return inbox


@pytest.mark.django_db
def test_it_sends_a_reminder_over_smtp_with_starttls_and_login(smtp_settings, user, make_account, monkeypatch,
                                                              django_capture_on_commit_callbacks):
    from migration import tasks

    monkeypatch.setattr(tasks.send_reminder, "delay", lambda pk: None)
    make_account(user, "jürgen@bäckerei.de")
    with django_capture_on_commit_callbacks(execute=True):
        reminders.remind(user_ids=[user.pk], sent_by=None)
    reminder = Reminder.objects.get()

    assert reminders.send(reminder.pk)

    inbox = smtp_settings
    assert inbox.logins == ["portal"]
    [envelope] = inbox.envelopes
    assert envelope.mail_from == "crm@firma.example" and envelope.rcpt_tos == [user.email]
    [message] = inbox.messages()
    assert message["To"] == user.email
    assert "migrieren" in message["Subject"]
    assert "jürgen@bäckerei.de" in message.get_content()
    reminder.refresh_from_db()
    assert reminder.sent_at is not None and reminder.error == ""


@pytest.mark.django_db
def test_a_refused_smtp_login_is_recorded_on_the_reminder(smtp_settings, settings, user, make_account, monkeypatch):
    from migration import tasks

    monkeypatch.setattr(tasks.send_reminder, "delay", lambda pk: None)
    settings.EMAIL_HOST_PASSWORD = "falsch"
    make_account(user, "anna@gmx.de")
    reminders.remind(user_ids=[user.pk], sent_by=None)
    reminder = Reminder.objects.get()

    assert not reminders.send(reminder.pk)

    reminder.refresh_from_db()
    assert reminder.sent_at is None and reminder.error == "SMTPAuthenticationError"
    assert smtp_settings.envelopes == []


def _python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EMAIL_") and k != "DATABASE_URL"}
    clean.update(env, DJANGO_SETTINGS_MODULE="portal.settings")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=60)


def test_the_embedded_default_writes_each_mail_to_a_file_in_the_data_folder(tmp_path):
    result = _python(
        "import django; django.setup()\n"
        "from django.core.mail import send_mail\n"
        "send_mail('Grüße', 'Hallo Jürgen', None, ['jurgen@example.com'])\n",
        PORTAL_DATA_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    [written] = list((tmp_path / "mail").iterdir())
    text = written.read_text()
    assert "To: jurgen@example.com" in text and "From: crm@localhost" in text


def test_it_uses_smtp_when_a_host_is_set(tmp_path):
    result = _python(
        "import django; django.setup()\n"
        "from django.conf import settings as s\n"
        "print(s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_USE_TLS, s.EMAIL_HOST_USER, s.DEFAULT_FROM_EMAIL)\n",
        PORTAL_DATA_DIR=str(tmp_path), EMAIL_HOST="smtp.firma.example", EMAIL_USE_TLS="true",
        EMAIL_HOST_USER="crm", EMAIL_HOST_PASSWORD="x", DEFAULT_FROM_EMAIL="crm@firma.example",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.core.mail.backends.smtp.EmailBackend", "smtp.firma.example", "587",
                                     "True", "crm", "crm@firma.example"]


@pytest.mark.parametrize("env, message", [
    ({"EMAIL_USE_TLS": "true", "EMAIL_USE_SSL": "true"}, "EMAIL_USE_TLS and EMAIL_USE_SSL"),
    ({"EMAIL_HOST": "smtp.firma.example", "EMAIL_HOST_PASSWORD": "x"}, "EMAIL_HOST_PASSWORD needs"),
    ({"EMAIL_PORT": "smtp"}, "EMAIL_PORT"),
    ({"EMAIL_USE_TLS": "ja"}, "EMAIL_USE_TLS"),
    ({"DEFAULT_FROM_EMAIL": "crm"}, "DEFAULT_FROM_EMAIL"),
])
def test_bad_mail_settings_stop_start_up(tmp_path, env, message):
    result = _python("import django; django.setup()", PORTAL_DATA_DIR=str(tmp_path), **env)
    assert result.returncode != 0 and message in result.stderr
