"""The built-in table knows the German/Austrian/Swiss market: by domain and by MX from a local nameserver."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import translation

from migration.detection import detect, host_needs_confirmation
from sync import provider_table
from sync.providers import IMAP_PROVIDERS
from tests.fakes.fixtures import fake_dns  # noqa: F401

BASE_DIR = Path(__file__).resolve().parent.parent

# (address, provider, IMAP host or None for Microsoft, port, security, user name)
BY_DOMAIN = [
    ("anna@gmail.com", "google", "imap.gmail.com", "anna@gmail.com"),
    ("anna@googlemail.com", "google", "imap.gmail.com", "anna@googlemail.com"),
    ("anna@outlook.com", "microsoft365", None, None),
    ("anna@outlook.de", "microsoft365", None, None),
    ("anna@hotmail.com", "microsoft365", None, None),
    ("anna@live.de", "microsoft365", None, None),
    ("anna@msn.com", "microsoft365", None, None),
    ("anna@icloud.com", "icloud", "imap.mail.me.com", "anna"),
    ("anna@me.com", "icloud", "imap.mail.me.com", "anna"),
    ("anna@mac.com", "icloud", "imap.mail.me.com", "anna"),
    ("anna@yahoo.de", "yahoo", "imap.mail.yahoo.com", "anna@yahoo.de"),
    ("anna@yahoo.com", "yahoo", "imap.mail.yahoo.com", "anna@yahoo.com"),
    ("anna@ymail.com", "yahoo", "imap.mail.yahoo.com", "anna@ymail.com"),
    ("anna@aol.com", "aol", "imap.aol.com", "anna@aol.com"),
    ("anna@aol.de", "aol", "imap.aol.com", "anna@aol.de"),
    ("anna@gmx.net", "gmx", "imap.gmx.net", "anna@gmx.net"),
    ("anna@gmx.de", "gmx", "imap.gmx.net", "anna@gmx.de"),
    ("anna@gmx.at", "gmx", "imap.gmx.net", "anna@gmx.at"),
    ("anna@gmx.ch", "gmx", "imap.gmx.net", "anna@gmx.ch"),
    ("anna@web.de", "webde", "imap.web.de", "anna"),
    ("anna@t-online.de", "tonline", "secureimap.t-online.de", "anna@t-online.de"),
    ("anna@magenta.de", "tonline", "secureimap.t-online.de", "anna@magenta.de"),
    ("anna@ionos.de", "ionos", "imap.ionos.de", "anna@ionos.de"),
    ("anna@1und1.de", "1und1", "imap.1und1.de", "anna@1und1.de"),
    ("anna@online.de", "1und1", "imap.1und1.de", "anna@online.de"),
    ("anna@strato.de", "strato", "imap.strato.de", "anna@strato.de"),
    ("anna@freenet.de", "freenet", "mx.freenet.de", "anna@freenet.de"),
    ("anna@posteo.de", "posteo", "posteo.de", "anna@posteo.de"),
    ("anna@posteo.at", "posteo", "posteo.de", "anna@posteo.at"),
    ("anna@mailbox.org", "mailboxorg", "imap.mailbox.org", "anna@mailbox.org"),
    ("anna@mail.de", "mailde", "imap.mail.de", "anna@mail.de"),
    ("anna@zoho.eu", "zoho", "imap.zoho.eu", "anna@zoho.eu"),
]

# A company domain hosted somewhere: (MX records, provider, IMAP host or None)
BY_MX = [
    (["0 firma-test.mail.protection.outlook.com."], "microsoft365", None),
    (["0 firma-test.o-v1.mx.microsoft."], "microsoft365", None),
    (["1 aspmx.l.google.com.", "5 alt1.aspmx.l.google.com.", "10 aspmx2.googlemail.com."], "google",
     "imap.gmail.com"),
    (["1 smtp.google.com."], "google", "imap.gmail.com"),
    (["10 alt2.aspmx.l.google.com."], "google", "imap.gmail.com"),
    (["10 mx01.mail.icloud.com.", "10 mx02.mail.icloud.com."], "icloud", "imap.mail.me.com"),
    (["1 mta5.am0.yahoodns.net."], "yahoo", "imap.mail.yahoo.com"),
    (["1 mx-aol.mail.gm0.yahoodns.net."], "aol", "imap.aol.com"),
    (["10 mx.zoho.eu.", "20 mx2.zoho.eu."], "zoho", "imappro.zoho.eu"),
    (["10 mx.zoho.com."], "zoho", "imappro.zoho.com"),
    (["10 mx00.gmx.net."], "gmx", "imap.gmx.net"),
    (["10 mx-ha01.web.de."], "webde", "imap.web.de"),
    (["10 mx00.t-online.de."], "tonline", "secureimap.t-online.de"),
    (["5 smtpin.rzone.de."], "strato", "imap.strato.de"),
    (["10 mx00.ionos.de.", "10 mx01.ionos.de."], "ionos", "imap.ionos.de"),
    (["10 mx00.kundenserver.de."], "ionos", "imap.ionos.de"),
    (["10 mxext1.mailbox.org.", "10 mxext2.mailbox.org."], "mailboxorg", "imap.mailbox.org"),
    (["10 www123.your-server.de.", "20 mx-backup.your-server.de."], "hetzner", "mail.your-server.de"),
    (["10 w0123456.kasserver.com."], "allinkl", "w0123456.kasserver.com"),
    (["10 mx0.ispgateway.de."], "domainfactory", "sslin.df.eu"),
    (["10 mx00.udag.de.", "20 mx01.udag.de."], "udag", "imaps.udag.de"),
]


def test_the_table_covers_at_least_forty_addresses():
    assert len(BY_DOMAIN) + len(BY_MX) >= 40


@pytest.mark.parametrize("address, provider, host, username", BY_DOMAIN)
def test_it_knows_the_market_by_domain_without_dns(fake_dns, address, provider, host, username):
    result = detect(address)
    assert (result.provider, result.source, result.valid) == (provider, "table", True)
    server = result.server or {}
    assert (server.get("host"), server.get("username")) == (host, username)
    if host:
        assert (server["port"], server["security"]) == (993, "ssl")  # never a plain-text login
    assert not result.needs_confirmation and fake_dns.queries == []


@pytest.mark.parametrize("mx, provider, host", BY_MX)
def test_it_knows_hosted_company_domains_by_mx(fake_dns, mx, provider, host):
    fake_dns.add("firma.test", MX=mx)
    result = detect("info@firma.test")
    assert (result.provider, result.source) == (provider, "mx")
    assert (result.server or {}).get("host") == host
    # The hoster's own server, even one named after the MX, is no stranger: nothing to confirm.
    assert not result.needs_confirmation
    assert fake_dns.queries == [("firma.test", "MX")]


def test_it_does_not_trust_a_lookalike_of_a_hosters_server():
    assert not host_needs_confirmation("firma.test", "w0123456.kasserver.com")
    assert host_needs_confirmation("firma.test", "w0123456.kasserver.com.evil.example")
    assert host_needs_confirmation("firma.test", "imap.gmail.com.evil.example")


@pytest.mark.parametrize("address, expected, url", [
    ("anna@icloud.com", "app-spezifisches Passwort", "https://support.apple.com/de-de/102654"),
    ("anna@yahoo.de", "App-Passwort", "https://help.yahoo.com/kb/SLN15241.html"),
    ("anna@aol.com", "App-Passwort", "https://help.aol.com/articles/Create-and-manage-app-password"),
    ("anna@gmail.com", "App-Passwort", "https://support.google.com/accounts/answer/185833"),
    ("anna@freenet.de", "freenet-Einstellungen", "https://kundenservice.freenet.de/"),
    ("anna@gmx.de", "GMX-Einstellungen", "https://hilfe.gmx.net/"),
])
def test_it_says_what_the_provider_needs_with_its_help_link(address, expected, url):
    data = detect(address).as_dict()
    assert any(expected in hint for hint in data["hints"])
    assert data["help_url"].startswith(url)


def test_every_hint_of_the_table_has_an_english_translation():
    hints = [hint for p in provider_table.PROVIDERS for hint in p.hints] + [provider_table.APP_PASSWORD_HINT]
    with translation.override("de"):
        german = [str(hint) for hint in hints]
    with translation.override("en"):
        english = [str(hint) for hint in hints]
    assert [de for de, en in zip(german, english) if de == en] == []


def test_every_imap_entry_names_a_server_or_says_where_to_find_it():
    for provider in IMAP_PROVIDERS.values():
        assert provider.host or provider.hints, provider.key
        assert provider.port in (993, 143) and provider.security in ("ssl", "starttls")


@pytest.mark.parametrize("address", ["not-an-address", "anna@", "@gmx.de", "anna@gmx", "an na@gmx.de",
                                     "anna@@gmx.de", "anna@gmx..de", "anna@localhost"])
def test_it_refuses_what_is_not_an_address(fake_dns, address):
    result = detect(address)
    assert not result.valid and result.provider == "unknown" and fake_dns.queries == []


def test_detect_provider_refuses_what_is_not_an_address():
    with pytest.raises(CommandError) as error:
        call_command("detect_provider", "not-an-address", stdout=io.StringIO(), stderr=io.StringIO())
    assert error.value.returncode == 2 and "not an e-mail address" in str(error.value)


def test_detect_provider_exits_non_zero_from_a_real_shell():
    result = subprocess.run([sys.executable, "manage.py", "detect_provider", "not-an-address", "--json"],
                            cwd=BASE_DIR, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert result.returncode == 2
    assert "not an e-mail address" in result.stderr and result.stdout == ""


def test_detect_provider_prints_the_help_link():
    out = io.StringIO()
    call_command("detect_provider", "anna@icloud.com", stdout=out)
    assert "provider:   icloud (iCloud Mail), source table" in out.getvalue()
    assert "username:   anna" in out.getvalue() and "help:       https://support.apple.com/" in out.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize("address, host, username, hint, url", [
    ("kunde@icloud.com", "imap.mail.me.com", "kunde", "app-spezifisches Passwort", "https://support.apple.com/"),
    ("kunde@posteo.de", "posteo.de", "kunde@posteo.de", "", ""),
])
def test_the_login_step_is_prefilled_with_the_hint_and_the_providers_help_link(client, user, make_account,
                                                                                address, host, username, hint, url):
    from django.urls import reverse

    from migration import steps
    from migration.models import Migration
    from migration.services import start_migration

    migration = start_migration(user=user, account=make_account(user, address))
    steps.run_migration(migration.pk)
    migration = Migration.objects.get(pk=migration.pk)
    assert (migration.detected["host"], migration.detected["username"]) == (host, username)
    client.force_login(user)
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert f'value="{host}"' in page and hint in page
    assert ('data-testid="provider-help"' in page) is bool(url)
    if url:
        assert f'href="{url}' in page


@pytest.mark.django_db
@pytest.mark.parametrize("mx, host", [
    (["10 w0123456.kasserver.com."], "w0123456.kasserver.com"),
    (["10 mx.zoho.eu."], "imappro.zoho.eu"),
])
def test_the_login_step_takes_the_host_the_mx_rule_names(fake_dns, user, make_account, mx, host):
    from migration import steps
    from migration.models import Migration
    from migration.services import start_migration

    fake_dns.add("firma.test", MX=mx)
    migration = start_migration(user=user, account=make_account(user, "info@firma.test"))
    steps.run_migration(migration.pk)
    detected = Migration.objects.get(pk=migration.pk).detected
    assert (detected["host"], detected["confirm_host"]) == (host, "")
