import os
from datetime import date, timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.utils import translation

from portal.devservers import Dovecot


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, settings):
    # The default campaign dates (2025) are past: V2 would be switched off.
    # Tests run inside a live campaign unless they create their own.
    today = date.today()
    settings.CAMPAIGN_MIGRATE_BY = today + timedelta(days=14)
    settings.CAMPAIGN_V2_SHUTDOWN = today + timedelta(days=30)
    # This machine points requests at a CA bundle that would override any
    # verify= of ours; the tests use their own throw-away CAs.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(scope="session")
def _quiet_nameserver():
    from tests.fakes.dns import FakeDNS

    server = FakeDNS().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _local_dns(settings, _quiet_nameserver):
    # The migration worker detects providers by MX lookups: in tests they go
    # to a local nameserver that knows nothing (NXDOMAIN), never to the
    # machine's resolver. Tests that need records use the fake_dns fixture.
    settings.DNS_NAMESERVERS = [_quiet_nameserver.nameserver]
    settings.DNS_TIMEOUT = 1


@pytest.fixture(autouse=True)
def _default_language():
    # A test-client request with the English cookie leaves English active in the thread
    # (LocaleMiddleware activates, nothing deactivates): the next test would read translations.
    yield
    translation.deactivate()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The default hasher costs ~0.3 s per user; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def signed_in(client, user):
    client.force_login(user)
    return client


@pytest.fixture(scope="session")
def dovecot():
    server = Dovecot({}, pool_size=300).start()
    yield server
    server.stop()


@pytest.fixture
def mailbox(dovecot):
    """A fresh mailbox on the real Dovecot: (address, password)."""
    return dovecot.take_mailbox()


@pytest.fixture
def mail_settings(settings, dovecot):
    """Let the egress guard reach the local Dovecot and trust its certificate."""
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    settings.MAIL_TLS_CA_FILE = str(dovecot.cert_path)
    return settings


@pytest.fixture
def user(django_user_model):
    return make_user(django_user_model, "anna@example.com")


@pytest.fixture
def other_user(django_user_model):
    return make_user(django_user_model, "bernd@example.com")


def make_user(model, email, password="geheim-123"):
    return model.objects.create_user(username=email, email=email, password=password)


@pytest.fixture
def make_account():
    from sync.models import MailAccount

    def make(owner, address, **fields):
        fields.setdefault("provider_kind", "imap")
        return MailAccount.objects.create(owner=owner, address=address, **fields)

    return make


@pytest.fixture
def imap_account(make_account, user, dovecot, mailbox):
    """A V2 account of `user` on the real Dovecot, with working V2 credentials."""
    from sync import crypto

    address, password = mailbox
    return make_account(
        user, address, imap_host="127.0.0.1", imap_port=dovecot.tls_port, imap_security="ssl", username=address,
        secret_encrypted=crypto.encrypt_json({"password": password}),
    )


@pytest.fixture
def celery_worker_thread(transactional_db):
    """A real Celery worker (solo pool, in a thread) on the real Redis broker.

    It consumes both queues, "celery" and "control" (settings CELERY_TASK_QUEUES: a
    worker without -Q takes every queue listed there), so beat's routed tasks run too."""
    from celery.contrib.testing.worker import start_worker
    from celery.signals import task_postrun

    from portal.celery import app

    def close_connection(**kwargs):
        connection.close()  # the worker thread's connection must not outlive the test

    task_postrun.connect(close_connection, weak=False)
    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()  # nothing queued by an earlier test
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30) as worker:
        yield worker
    task_postrun.disconnect(close_connection)


def worker_environment(settings, dovecot, **extra) -> dict:
    """The environment of a separate worker process: this test session's PostgreSQL, keys and campaign."""
    from django.db import connection as db_connection

    db = db_connection.settings_dict
    keys = settings.ENCRYPTION_KEYS or [
        line.strip() for line in settings.ENCRYPTION_KEY_FILE.read_text().splitlines() if line.strip()
    ]
    return dict(
        os.environ,
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        EGRESS_ALLOW_NETWORKS="127.0.0.1/32",
        MAIL_TLS_CA_FILE=str(dovecot.cert_path),
        CAMPAIGN_MIGRATE_BY=settings.CAMPAIGN_MIGRATE_BY.isoformat(),
        CAMPAIGN_V2_SHUTDOWN=settings.CAMPAIGN_V2_SHUTDOWN.isoformat(),
        ENCRYPTION_KEYS=",".join(keys),
        **extra,
    )


def wait_for(predicate, timeout=20.0, interval=0.05):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API + live_server


class _SmtpInbox:
    """What a real local SMTP server (aiosmtpd) received: envelopes, and the logins it accepted."""

    def __init__(self):
        self.envelopes = []
        self.logins = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self):
        """The received messages, parsed (email.message.EmailMessage)."""
        import email
        from email import policy

        return [email.message_from_bytes(envelope.content, policy=policy.default) for envelope in self.envelopes]


@pytest.fixture
def smtp_server(tmp_path):
    """A real SMTP server on 127.0.0.1 that requires STARTTLS and AUTH (user "portal", password "smtp-geheim").

    Yields (port, cert_path, inbox). aiosmtpd speaks RFC 5321 with STARTTLS (RFC 3207) and AUTH (RFC 4954).
    """
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from portal.devservers import free_port, make_certificate

    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = _SmtpInbox()

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (auth_data.login, auth_data.password) == (b"portal", b"smtp-geheim")
        if ok:
            inbox.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself

    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                            authenticator=authenticator, auth_required=True, auth_require_tls=True)
    controller.start()
    try:
        yield port, cert, inbox
    finally:
        controller.stop()
