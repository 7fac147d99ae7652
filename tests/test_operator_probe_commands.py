"""Operator commands detect_provider and probe_mailbox: same code paths and guard as the migration."""

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.fakes.fixtures import (  # noqa: F401
    EWS_PASSWORD, EWS_USER, fake_dns, fake_ews, fake_ews_ntlm, hosts, no_connections,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# probe_mailbox counts its attempts in the database (sync.models.AttemptBudget).
pytestmark = pytest.mark.django_db


def _run(*args, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **kwargs)
    return out.getvalue()


# --- detect_provider -----------------------------------------------------------------------------------------------


def test_it_prints_the_detection_as_json(fake_dns):
    fake_dns.add("kanzlei.test", MX=["10 mx00.ionos.de.", "10 mx01.ionos.de."])
    data = json.loads(_run("detect_provider", "info@kanzlei.test", "--json"))
    assert data["provider"] == "ionos" and data["candidates"] == ["ionos", "microsoft365"]
    assert (data["server"]["host"], data["server"]["port"]) == ("imap.ionos.de", 993)
    assert data["hints"] and all(isinstance(hint, str) for hint in data["hints"])


def test_it_prints_a_readable_summary():
    out = _run("detect_provider", "oma@web.de")
    assert "provider:   webde (WEB.DE), source table" in out
    assert "imap imap.web.de:993 (ssl)" in out and "username:   oma" in out
    assert "WEB.DE meldet Sie mit dem Teil vor dem @ an." in out


# --- probe_mailbox over IMAP (real Dovecot) ------------------------------------------------------------------------


def test_it_probes_an_imap_mailbox_with_the_password_from_stdin(mail_settings, dovecot, mailbox):
    address, password = mailbox
    out = _run("probe_mailbox", "--provider", "imap", "--host", "127.0.0.1", "--port", str(dovecot.tls_port),
               "--username", address, stdin=io.StringIO(password + "\n"))
    assert out.startswith("connected:")
    cursors = json.loads(out.split("\n", 1)[1])
    assert cursors["INBOX"]["uidvalidity"] and cursors["INBOX"]["uidnext"] == 1


def test_it_probes_imap_with_starttls(mail_settings, dovecot, mailbox):
    address, password = mailbox
    out = _run("probe_mailbox", "--provider", "imap", "--host", "127.0.0.1", "--port", str(dovecot.port),
               "--security", "starttls", "--username", address, stdin=io.StringIO(password + "\n"))
    assert "INBOX" in out


def test_it_exits_1_on_a_wrong_password(mail_settings, dovecot, mailbox):
    with pytest.raises(CommandError) as error:
        _run("probe_mailbox", "--provider", "imap", "--host", "127.0.0.1", "--port", str(dovecot.tls_port),
             "--username", mailbox[0], stdin=io.StringIO("falsch\n"))
    assert error.value.returncode == 1 and str(error.value) == "connection failed: auth_failed"


@pytest.mark.parametrize("host", ["10.0.0.1", "169.254.169.254", "127.0.0.2", "::ffff:127.0.0.2", "0x7f000002"])
def test_it_exits_2_when_the_egress_policy_refuses(mail_settings, host):
    with no_connections(), pytest.raises(CommandError) as error:
        _run("probe_mailbox", "--provider", "imap", "--host", host, "--username", "anna",
             stdin=io.StringIO("geheim\n"))
    assert error.value.returncode == 2 and "egress policy refused" in str(error.value)


@pytest.mark.parametrize("provider", ["imap", "ews"])
def test_it_exits_1_when_the_host_name_does_not_resolve(mail_settings, hosts, provider):
    def unknown():
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    hosts["mail.unbekannt.test"] = unknown
    with no_connections(), pytest.raises(CommandError) as error:
        _run("probe_mailbox", "--provider", provider, "--host", "mail.unbekannt.test", "--username", "anna@firma.test",
             stdin=io.StringIO("geheim\n"))
    # Not "the egress policy refused": support would go looking in EGRESS_ALLOW_NETWORKS.
    assert error.value.returncode == 1 and str(error.value) == "cannot resolve mail.unbekannt.test"


def test_it_exits_3_when_the_destination_was_tried_too_often(mail_settings, dovecot, mailbox, settings):
    settings.EGRESS_RATE_PER_DESTINATION = 1
    args = ("probe_mailbox", "--provider", "imap", "--host", "127.0.0.1", "--port", str(dovecot.tls_port),
            "--username", mailbox[0])
    _run(*args, stdin=io.StringIO(mailbox[1] + "\n"))
    with pytest.raises(CommandError) as error:
        _run(*args, stdin=io.StringIO(mailbox[1] + "\n"))
    assert error.value.returncode == 3


def test_it_never_takes_the_password_from_the_command_line():
    with pytest.raises(CommandError):
        call_command("probe_mailbox", "--provider", "imap", "--host", "x.test", "--username", "a",
                     "--password", "geheim")


def test_it_refuses_an_empty_password():
    with pytest.raises(CommandError, match="no password"):
        _run("probe_mailbox", "--provider", "imap", "--host", "x.test", "--username", "a", stdin=io.StringIO("\n"))


# --- probe_mailbox over EWS (fake Exchange) ------------------------------------------------------------------------


def test_it_probes_an_exchange_mailbox(fake_ews, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(fake_ews.cert_pem)
    out = _run("probe_mailbox", "--provider", "ews", "--host", f"localhost:{fake_ews.port}", "--username", EWS_USER,
               "--address", "anna@firma.test", "--auth", "basic", "--ca-file", str(ca_file),
               stdin=io.StringIO(EWS_PASSWORD + "\n"))
    cursors = json.loads(out.split("\n", 1)[1])
    assert set(cursors) == {"INBOX", "Sent"} and cursors["INBOX"]["ews_sync_state"]


@pytest.mark.parametrize("server, auth", [("fake_ews", "basic"), ("fake_ews_ntlm", "ntlm")])
@pytest.mark.parametrize("flag", [(), ("--auth", "auto")], ids=["default", "explicit"])
def test_it_lets_the_exchange_server_choose_the_sign_in_like_the_migration(request, tmp_path, server, auth, flag):
    fake = request.getfixturevalue(server)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(fake.cert_pem)
    out = _run("probe_mailbox", "--provider", "ews", "--host", f"localhost:{fake.port}", "--username", EWS_USER,
               "--address", "anna@firma.test", *flag, "--ca-file", str(ca_file), stdin=io.StringIO(EWS_PASSWORD + "\n"))
    assert out.startswith(f"connected: 2 folders (auth {auth})\n")
    assert set(json.loads(out.split("\n", 1)[1])) == {"INBOX", "Sent"}
    assert fake.calls[0] == "401"  # the anonymous question came first
    assert ("ntlm-ok" in fake.calls) is (auth == "ntlm")


def test_it_reports_an_untrusted_exchange_certificate(fake_ews):
    with pytest.raises(CommandError) as error:
        _run("probe_mailbox", "--provider", "ews", "--host", fake_ews.url, "--username", EWS_USER,
             "--address", "anna@firma.test", "--auth", "basic", stdin=io.StringIO(EWS_PASSWORD + "\n"))
    assert error.value.returncode == 1 and str(error.value) == "connection failed: tls_failed"


def test_it_refuses_exchange_over_plain_http():
    with pytest.raises(CommandError, match="https"):
        _run("probe_mailbox", "--provider", "ews", "--host", "http://mail.firma.test/EWS/Exchange.asmx",
             "--username", "a", stdin=io.StringIO("pw\n"))


# --- as operators run it -------------------------------------------------------------------------------------------


def test_it_exits_non_zero_with_the_reason_from_a_real_shell():
    env = {key: value for key, value in os.environ.items() if key != "EGRESS_ALLOW_NETWORKS"}
    result = subprocess.run(
        [sys.executable, "manage.py", "probe_mailbox", "--provider", "imap", "--host", "169.254.169.254",
         "--username", "anna"],
        input="geheim\n", capture_output=True, text=True, cwd=BASE_DIR, env=env, timeout=60,
    )
    assert result.returncode == 2
    assert "egress policy refused 169.254.169.254" in result.stderr
    assert "geheim" not in result.stdout + result.stderr


def test_it_needs_the_mailbox_address_when_the_exchange_login_is_not_one():
    with pytest.raises(CommandError, match="--address"):
        _run("probe_mailbox", "--provider", "ews", "--host", "mail.firma.test", "--username", "CORP\\anna",
             stdin=io.StringIO("pw\n"))
