"""The CA-certificate field takes certificates only: a private key is refused with a clear message,
never stored, never shown to staff (Exchange form, admin, probe_mailbox, stored rows from before)."""

import importlib
import io
import subprocess

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.urls import reverse

from migration import services, steps
from migration.models import Migration
from migration.selectors import current_campaign
from sync.certificates import NotCertificates, certificates_only
from sync.models import MailAccount


def _openssl(*args, directory) -> str:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    """A self-signed CA certificate and private keys in the forms servers export them."""
    d = tmp_path_factory.mktemp("pem")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Firma CA",
             "-keyout", "pkcs8.pem", "-out", "cert.pem", directory=d)
    _openssl("pkey", "-in", "pkcs8.pem", "-traditional", "-out", "rsa.pem", directory=d)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.pem", directory=d)
    _openssl("pkcs8", "-topk8", "-in", "pkcs8.pem", "-v2", "aes256", "-passout", "pass:x", "-out", "enc.pem",
             directory=d)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=Zwischen-CA", "-keyout", "other-key.pem", "-out", "other.pem", directory=d)
    return {name: (d / f"{name}.pem").read_text() for name in ("cert", "pkcs8", "rsa", "ec", "enc", "other")}


KEYS = ["pkcs8", "rsa", "ec", "enc"]
OPENSSH = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
KEY_MESSAGE = "enthält einen privaten Schlüssel"


def key_body(key_pem: str) -> str:
    return key_pem.strip().splitlines()[1]  # a line of the key's base64


# --- the rule ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("order", ["key first", "key last"])
def test_it_refuses_a_private_key_in_any_form(pem, key, order):
    text = pem[key] + pem["cert"] if order == "key first" else pem["cert"] + "\n" + pem[key]
    with pytest.raises(NotCertificates) as refused:
        certificates_only(text)
    assert refused.value.reason == "private_key"


def test_it_refuses_an_openssh_key_and_a_key_with_a_broken_end_line(pem):
    for text in (pem["cert"] + OPENSSH, pem["cert"] + pem["rsa"].replace("-----END RSA PRIVATE KEY-----", "")):
        with pytest.raises(NotCertificates, match="private_key"):
            certificates_only(text)


def test_it_keeps_only_the_certificates(pem):
    text = f"Firmen-CA, bitte vertrauen\n{pem['cert']}\n-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n" \
           f"{pem['other']}"
    assert certificates_only(text) == pem["cert"] + pem["other"]
    assert certificates_only("  \n") == ""


@pytest.mark.parametrize("text", ["kein Zertifikat", "-----BEGIN CERTIFICATE-----\nkaputt\n-----END CERTIFICATE-----"])
def test_it_refuses_what_is_no_certificate(text):
    with pytest.raises(NotCertificates, match="no_certificate"):
        certificates_only(text)


# --- the Exchange form -----------------------------------------------------------------------------------


@pytest.fixture
def exchange_migration(user, make_account):
    migration = services.start_migration(user=user, account=make_account(user, "anna@firma.test",
                                                                          provider_kind="exchange"))
    assert steps.run_migration(migration.pk) == "awaiting_user"
    return migration


def _submit(client, migration, ca_pem, **headers):
    return client.post(reverse("migration-credentials", args=[migration.pk]), {
        "address": "anna@firma.test", "username": "FIRMA\\anna", "password": "pw", "auth_type": "auto",
        "server": "mail.firma.test", "ca_pem": ca_pem}, **headers)


@pytest.mark.django_db
@pytest.mark.parametrize("key", KEYS)
def test_the_exchange_form_refuses_a_key_and_does_not_show_it_back(signed_in, exchange_migration, pem, key):
    response = _submit(signed_in, exchange_migration, pem["cert"] + pem[key])
    page = response.content.decode()
    assert response.status_code == 400 and KEY_MESSAGE in page
    assert key_body(pem[key]) not in page and "PRIVATE KEY" not in page
    migration = Migration.objects.get(pk=exchange_migration.pk)
    assert migration.status == "awaiting_user" and migration.connection == {} and migration.secret_encrypted == ""


@pytest.mark.django_db
def test_the_exchange_form_says_it_in_english_too(signed_in, exchange_migration, pem):
    response = _submit(signed_in, exchange_migration, pem["cert"] + pem["rsa"], HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400 and "contains a private key" in response.content.decode()


@pytest.mark.django_db
def test_the_exchange_form_stores_the_certificates_only(signed_in, exchange_migration, pem):
    response = _submit(signed_in, exchange_migration, "Unsere CA:\n" + pem["cert"])
    assert response.status_code == 302
    assert Migration.objects.get(pk=exchange_migration.pk).connection["ca_pem"] == pem["cert"]


# --- the admin ----------------------------------------------------------------------------------------------


@pytest.fixture
def account(user, make_account, pem):
    return make_account(user, "anna@firma.test", provider_kind="exchange", ews_url="https://mail.firma.test/EWS/",
                        tls_ca_pem=pem["cert"])


def _admin_form(account, **changes) -> dict:
    data = {"owner": account.owner_id, "address": account.address, "provider_kind": account.provider_kind,
            "provider_name": account.provider_name, "status": account.status, "ews_url": account.ews_url,
            "tls_ca_pem": account.tls_ca_pem, "folders-TOTAL_FORMS": "0", "folders-INITIAL_FORMS": "0"}
    return {**data, **changes}


@pytest.mark.django_db
def test_the_admin_refuses_a_key_and_keeps_the_stored_certificate(admin_client, account, pem):
    url = reverse("admin:sync_mailaccount_change", args=[account.pk])
    response = admin_client.post(url, _admin_form(account, tls_ca_pem=pem["other"] + pem["ec"]))
    page = response.content.decode()
    assert response.status_code == 200 and KEY_MESSAGE in page and key_body(pem["ec"]) not in page
    assert MailAccount.objects.get(pk=account.pk).tls_ca_pem == pem["cert"]

    response = admin_client.post(url, _admin_form(account, tls_ca_pem="neu:\n" + pem["other"]))
    assert response.status_code == 302, response.content.decode()[:3000]
    assert MailAccount.objects.get(pk=account.pk).tls_ca_pem == pem["other"]


# --- the command, the account's storage, rows stored before ---------------------------------------------------


def test_probe_mailbox_refuses_a_ca_file_with_a_key(pem, tmp_path):
    ca_file = tmp_path / "server.pem"
    ca_file.write_text(pem["cert"] + pem["pkcs8"])
    with pytest.raises(CommandError, match="private key"):
        call_command("probe_mailbox", "--provider", "ews", "--host", "mail.firma.test", "--username", "FIRMA\\anna",
                     "--address", "anna@firma.test", "--ca-file", str(ca_file), stdin=io.StringIO("pw\n"))


def test_an_account_never_takes_a_key(pem):
    from sync.exchange import client as ews

    account = MailAccount(address="anna@firma.test")
    server = ews.settings_from({"ews_url": "https://mail.firma.test/EWS/Exchange.asmx", "username": "anna",
                                "ca_pem": pem["cert"] + pem["rsa"]}, "anna@firma.test")
    with pytest.raises(NotCertificates):
        ews.apply_to_account(account, server=server, password="pw")
    assert account.tls_ca_pem == ""


@pytest.mark.django_db
def test_keys_stored_before_are_removed(user, make_account, pem):
    with_key = make_account(user, "anna@firma.test", tls_ca_pem=pem["cert"] + pem["rsa"])
    clean = make_account(user, "anna@privat.test", tls_ca_pem=pem["other"])
    only_key = make_account(user, "anna@drei.test", tls_ca_pem=pem["ec"])
    migration = Migration.objects.create(account=with_key, user=user, provider_kind="exchange",
                                         campaign=current_campaign(),
                                         connection={"ews_url": "https://x.test/EWS/", "ca_pem": pem["enc"] + pem["cert"]})
    importlib.import_module("sync.migrations.0008_ca_certificates_only").drop_private_keys(apps, None)
    importlib.import_module("migration.migrations.0007_ca_certificates_only").drop_private_keys(apps, None)
    assert MailAccount.objects.get(pk=with_key.pk).tls_ca_pem == pem["cert"]
    assert MailAccount.objects.get(pk=clean.pk).tls_ca_pem == pem["other"]
    assert MailAccount.objects.get(pk=only_key.pk).tls_ca_pem == ""
    assert Migration.objects.get(pk=migration.pk).connection == {"ews_url": "https://x.test/EWS/", "ca_pem": pem["cert"]}
