"""A mail server that answers one byte at a time cannot pin a sync run or its account (SYNC_RUN_MAX_SECONDS)."""

import socket
import ssl
import threading
import time

import pytest
from django.db import connection

from portal.devservers import free_port
from sync import crypto
from sync.models import MailAccount
from sync.runs import sync_account


@pytest.fixture
def dripping_server(dovecot):
    """A TLS server on 127.0.0.1 that answers one byte every 0.3 s and never ends its line (IMAP or HTTP)."""
    port = free_port()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(dovecot.base / "cert.pem"), str(dovecot.base / "key.pem"))
    listener = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()
    sent = []

    def serve():
        connection, _ = listener.accept()
        try:
            tls = context.wrap_socket(connection, server_side=True)
            tls.settimeout(0.5)
            try:
                tls.recv(65536)  # an HTTP request, if the client speaks first
            except (TimeoutError, ssl.SSLError):
                pass  # IMAP: the server speaks first
            for byte in b"* OK " + b"." * 600:  # at most ~3 minutes, then it stops by itself
                if stop.is_set():
                    break
                tls.send(bytes([byte]))
                sent.append(byte)
                time.sleep(0.3)
        except OSError:
            pass  # the client shut the connection down: what the test wants
        finally:
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, sent
    stop.set()
    listener.close()
    thread.join(10)


@pytest.mark.django_db(transaction=True)
def test_it_ends_a_run_that_passes_the_maximum_and_frees_the_account(make_account, user, dovecot, settings,
                                                                     dripping_server):
    port, sent = dripping_server
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    settings.MAIL_TLS_CA_FILE = str(dovecot.cert_path)
    settings.MAIL_CONNECT_TIMEOUT = 5  # every byte arrives well within the per-read timeout
    settings.SYNC_LEASE_SECONDS = 3
    settings.SYNC_RUN_MAX_SECONDS = 2
    account = make_account(user, "tropf@example.org", engine="v3", imap_host="127.0.0.1", imap_port=port,
                           imap_security="ssl", username="tropf",
                           secret_encrypted=crypto.encrypt_json({"password": "pw"}))
    result = {}

    def sync_in_a_worker_thread():
        try:
            result["added"] = sync_account(account.pk)
        finally:
            connection.close()  # this thread's own database connection

    run = threading.Thread(target=sync_in_a_worker_thread, daemon=True)
    run.start()
    run.join(60)  # a bound for a broken build only; the run ends after SYNC_RUN_MAX_SECONDS
    assert not run.is_alive()
    account.refresh_from_db()
    # The shut-down connection reads as a broken answer: "protocol" (the log says why).
    assert (result["added"], account.status, account.last_sync_error) == (0, "error", "protocol")
    assert account.sync_lease_token == ""  # released: the next run may start
    assert len(sent) < 600


@pytest.mark.django_db(transaction=True)
def test_it_ends_an_exchange_run_that_passes_the_maximum(make_account, user, dovecot, settings, dripping_server):
    port, sent = dripping_server
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    settings.MAIL_CONNECT_TIMEOUT = 5
    settings.SYNC_LEASE_SECONDS = 3
    settings.SYNC_RUN_MAX_SECONDS = 2
    account = make_account(user, "tropf@firma.test", provider_kind="exchange", engine="v3", username="FIRMA\\tropf",
                           ews_url=f"https://127.0.0.1:{port}/EWS/Exchange.asmx", ews_auth_type="basic",
                           tls_ca_pem=dovecot.cert_path.read_text(),
                           secret_encrypted=crypto.encrypt_json({"password": "pw"}))
    result = {}

    def sync_in_a_worker_thread():
        try:
            result["added"] = sync_account(account.pk)
        finally:
            connection.close()

    run = threading.Thread(target=sync_in_a_worker_thread, daemon=True)
    run.start()
    run.join(60)  # a bound for a broken build only
    assert not run.is_alive()
    account.refresh_from_db()
    assert result["added"] == 0 and account.status == "error" and account.last_sync_error in ("unreachable", "protocol")
    assert account.sync_lease_token == ""
    assert len(sent) < 600


@pytest.mark.django_db(transaction=True)
def test_it_refuses_new_connections_once_the_run_has_overrun(imap_account, mailbox, mail_settings):
    from sync import leases
    from sync.errors import MailboxError
    from sync.imap import client as imap
    from sync.services import imap_settings_of

    mail_settings.SYNC_LEASE_SECONDS = 3
    mail_settings.SYNC_RUN_MAX_SECONDS = 1
    settings_of_account = imap_settings_of(imap_account)
    try:
        with leases.held(imap_account.pk) as held:
            assert held
            imap.close(imap.open_mailbox(settings_of_account, mailbox[1]))  # within the limit: fine
            renewal = leases._current.renewal
            for _ in range(100):  # until the lease thread has seen the deadline pass (at most ~10 s)
                if renewal.overran:
                    break
                time.sleep(0.1)
            assert renewal.overran
            # A run that tries to carry on over a fresh connection (a reopen after a failed FETCH) cannot.
            with pytest.raises(MailboxError):
                imap.open_mailbox(settings_of_account, mailbox[1])
    finally:
        connection.close()
