"""The demo commands: demo_data and demo_mailserver, against a real Dovecot."""

import io
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils.timezone import localdate

from migration.demo import DEMO_M365_ACCOUNT, DEMO_MAILBOXES, DEMO_STAFF, DEMO_USER, SEED_MESSAGES, seed_messages
from migration.models import Campaign
from portal.devservers import free_port
from sync import crypto
from sync.models import FolderState, MailAccount, SyncedMessage

User = get_user_model()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _db_state():
    return {
        model.__name__: list(model.objects.order_by("pk").values())
        for model in (User, MailAccount, FolderState, SyncedMessage)
    }


# --- demo_data ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_mailboxes(dovecot):
    """The demo mailboxes on the session Dovecot, with the demo seed mail (once per module)."""
    for address, password in DEMO_MAILBOXES.items():
        dovecot.set_password(address, password)
        if not _inbox(dovecot, address):
            dovecot.deliver(address, *[raw for raw, _ in seed_messages(address, datetime.now(timezone.utc))])
    return DEMO_MAILBOXES


def _inbox(dovecot, address) -> list[str]:
    """The INBOX's subjects (decoded, like the engines store them), oldest first."""
    client = dovecot.client(address)
    try:
        client.select_folder("INBOX", readonly=True)
        uids = client.search("ALL")
        fetched = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]) if uids else {}
        parse = BytesHeaderParser(policy=default_policy).parsebytes
        return [str(parse(fetched[uid][b"BODY[HEADER.FIELDS (SUBJECT)]"])["Subject"]) for uid in sorted(fetched)]
    finally:
        client.logout()


@pytest.mark.django_db
def test_it_sets_up_the_demo_idempotently_without_a_mail_server():
    closed = free_port()  # nothing listens there
    out = _run("demo_data", "--tls-port", str(closed))
    assert "the demo mail server is not running" in out and DEMO_USER[1] in out
    first = _db_state()
    _run("demo_data", "--tls-port", str(closed))
    assert User.objects.count() == 2 and MailAccount.objects.count() == 3
    # The Microsoft 365 account (the run command's demo tenant): V2, with stand-in history.
    ben = MailAccount.objects.get(address=DEMO_M365_ACCOUNT)
    assert (ben.provider_kind, ben.engine) == ("microsoft", "v2")
    assert SyncedMessage.objects.filter(account=ben, imported_by="v2").count() == \
        len([m for m in SEED_MESSAGES if m.with_message_id])
    assert SyncedMessage.objects.count() == len(first["SyncedMessage"])  # no second stand-in history
    demo, support = User.objects.get(username=DEMO_USER[0]), User.objects.get(username=DEMO_STAFF[0])
    assert demo.check_password(DEMO_USER[1]) and not demo.is_staff
    assert support.check_password(DEMO_STAFF[1]) and support.is_staff and support.is_superuser
    for address, password in DEMO_MAILBOXES.items():
        account = MailAccount.objects.get(owner=demo, address=address)
        assert (account.engine, account.imap_host, account.imap_port, account.provider_name) == \
            ("v2", "127.0.0.1", closed, "other")
        assert crypto.decrypt_json(account.secret_encrypted) == {"password": password}
        assert SyncedMessage.objects.filter(account=account, imported_by="v2").count() == \
            len([m for m in SEED_MESSAGES if m.with_message_id])
        assert FolderState.objects.get(account=account, name="INBOX").v2_high_water is not None
    campaign = Campaign.objects.get(is_active=True)
    today = localdate()
    assert (campaign.migrate_by, campaign.v2_shutdown) == (today + timedelta(days=14), today + timedelta(days=30))


@pytest.mark.django_db
def test_it_keeps_an_account_the_user_migrated_and_a_kept_campaign():
    closed = str(free_port())
    _run("demo_data", "--tls-port", closed)
    account = MailAccount.objects.get(address="anna@demo.localhost")
    MailAccount.objects.filter(pk=account.pk).update(engine="v3", imap_port=993, imap_host="imap.neu.example")
    Campaign.objects.update(migrate_by="2030-01-01", v2_shutdown="2030-02-01")
    migrated = MailAccount.objects.filter(pk=account.pk).values().get()
    out = _run("demo_data", "--tls-port", closed, "--keep-campaign")
    assert "anna@demo.localhost: already migrated to V3" in out
    assert MailAccount.objects.filter(pk=account.pk).values().get() == migrated
    assert str(Campaign.objects.get().migrate_by) == "2030-01-01"
    _run("demo_data", "--tls-port", closed)
    assert Campaign.objects.get().migrate_by == localdate() + timedelta(days=14)


@pytest.mark.django_db
def test_it_imports_real_v2_history_from_the_demo_mail_server(dovecot, demo_mailboxes, mail_settings):
    out = _run("demo_data", "--host", "127.0.0.1", "--tls-port", str(dovecot.tls_port))
    assert "not running" not in out
    assert [line for line in out.splitlines() if "stand-in" in line] == \
        [f"{DEMO_M365_ACCOUNT}: {sum(m.with_message_id for m in SEED_MESSAGES)} stand-in message(s) as V2 history"]  # V2 reached Microsoft otherwise
    for address in demo_mailboxes:
        account = MailAccount.objects.get(address=address)
        subjects = _inbox(dovecot, address)
        stored = SyncedMessage.objects.filter(account=account)
        assert sorted(stored.values_list("subject", flat=True)) == sorted(subjects)
        assert set(stored.values_list("imported_by", flat=True)) == {"v2"}
        assert FolderState.objects.get(account=account, name="INBOX").v2_last_poll_at is not None
    _run("demo_data", "--host", "127.0.0.1", "--tls-port", str(dovecot.tls_port))
    assert SyncedMessage.objects.filter(account__address__in=demo_mailboxes).count() == \
        sum(len(_inbox(dovecot, a)) for a in demo_mailboxes)


@pytest.mark.django_db
def test_it_falls_back_to_stand_in_history_when_the_poll_fails(dovecot, demo_mailboxes, mail_settings):
    mail_settings.MAIL_TLS_CA_FILE = ""  # the demo certificate is not trusted
    out = _run("demo_data", "--tls-port", str(dovecot.tls_port))
    assert "V2 poll failed (tls_failed)" in out and "stand-in message(s)" in out
    assert SyncedMessage.objects.filter(account__address="anna@demo.localhost").exists()


# --- demo_mailserver ----------------------------------------------------------------------------------------


def test_it_delivers_new_demo_mail_to_the_running_server(dovecot, demo_mailboxes, mail_settings):
    before = {address: _inbox(dovecot, address) for address in demo_mailboxes}
    out = _run("demo_mailserver", "--deliver", "2", "--host", "127.0.0.1", "--tls-port", str(dovecot.tls_port))
    for address in demo_mailboxes:
        assert f"{address}: delivered 2 new message(s)" in out
        new = _inbox(dovecot, address)[len(before[address]):]
        assert [s.split(" (")[0] for s in new] == ["Neue Nachricht 1", "Neue Nachricht 2"]


def test_it_says_when_the_demo_mail_server_is_not_running(mail_settings):
    with pytest.raises(CommandError, match="not running"):
        call_command("demo_mailserver", "--deliver", "1", "--tls-port", str(free_port()))


def test_it_runs_the_demo_mail_server_until_sigterm_and_keeps_its_mail():
    data = Path(tempfile.mkdtemp(prefix="demo-data-"))
    data.chmod(0o755)  # Dovecot's unprivileged processes traverse it
    ports = [str(free_port()), str(free_port())]
    try:
        first = _serve_once(data, ports)
        assert "anna@demo.localhost: seeded with demo mail" in first
        cert = data / "demo-mail" / "cert.pem"
        _write_expired_certificate(cert)  # kept certificates run out (30 days)
        second = _serve_once(data, ports)  # a restart keeps the mail and does not seed again
        assert "seeded" not in second and "demo mail server ready" in second
        assert "certificate expired: issuing a new one" in second
        assert x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc > datetime.now(timezone.utc)
    finally:
        pid_file = data / "demo-mail" / "run" / "master.pid"
        if pid_file.exists():  # a failed test must not leave a Dovecot behind
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        shutil.rmtree(data, ignore_errors=True)


def _write_expired_certificate(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    past = datetime.now(timezone.utc) - timedelta(days=40)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(past)
                   .not_valid_after(past + timedelta(days=30)).sign(key, hashes.SHA256()))
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _serve_once(data: Path, ports: list[str]) -> str:
    from imapclient import IMAPClient

    env = {**os.environ, "PORTAL_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1",
           "MAIL_TLS_CA_FILE": str(data / "demo-mail" / "cert.pem")}
    process = subprocess.Popen([sys.executable, "manage.py", "demo_mailserver", "--port", ports[0], "--tls-port",
                                ports[1]], cwd=Path(__file__).parent.parent, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, ready = [], threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                ready.set()
        ready.set()  # the output ended: the command exited

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(30) and process.poll() is None, "".join(lines)
        context = ssl.create_default_context(cafile=str(data / "demo-mail" / "cert.pem"))
        for address, password in DEMO_MAILBOXES.items():
            with IMAPClient("127.0.0.1", port=int(ports[1]), ssl=True, ssl_context=context, timeout=10) as client:
                client.login(address, password)
                assert client.select_folder("INBOX")[b"EXISTS"] == len(SEED_MESSAGES)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(5)
    with pytest.raises(OSError):  # Dovecot went with it
        IMAPClient("127.0.0.1", port=int(ports[1]), ssl=True, timeout=2)
    return "".join(lines)
