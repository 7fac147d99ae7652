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
    ("anna@hosteurope.de", "hosteurope", "imap.hosteurope.de", "anna@hosteurope.de"),
]

# Company domains hosted somewhere, answered by the local nameserver: (address, MX records, provider,
# IMAP host or None (Microsoft 365: Graph, no IMAP; unknown: the user types it), user name or None).
# Every proposed server is 993 with implicit TLS.
BY_MX = [
    ("info@kanzlei-mueller.test", ["0 kanzlei-mueller-test.mail.protection.outlook.com."], "microsoft365", None, None),
    ("info@praxis-berg.test", ["0 praxis-berg-test.o-v1.mx.microsoft."], "microsoft365", None, None),
    ("info@ingenieure-plus.test", ["0 ingenieure-plus-test.a-v1.mx.microsoft."], "microsoft365", None, None),
    ("anna@familie-koch.test", ["10 familie-koch-test.olc.protection.outlook.com."], "microsoft365", None, None),
    # a filtering service in front, Microsoft 365 behind it as the backup MX
    ("chef@spedition-nord.test", ["10 mx.filter-dienst.test.", "20 spedition-nord-test.mail.protection.outlook.com."],
     "microsoft365", None, None),
    ("info@schreinerei-holz.test", ["1 aspmx.l.google.com.", "5 alt1.aspmx.l.google.com.", "10 aspmx2.googlemail.com."],
     "google", "imap.gmail.com", "info@schreinerei-holz.test"),
    ("team@start-up-eins.test", ["1 aspmx.l.google.com.", "5 alt1.aspmx.l.google.com.", "5 alt2.aspmx.l.google.com.",
                                 "10 alt3.aspmx.l.google.com.", "10 alt4.aspmx.l.google.com."], "google",
     "imap.gmail.com", "team@start-up-eins.test"),
    ("buero@agentur-blau.test", ["1 smtp.google.com."], "google", "imap.gmail.com", "buero@agentur-blau.test"),
    ("kontakt@verein-sport.test", ["10 alt2.aspmx.l.google.com."], "google", "imap.gmail.com",
     "kontakt@verein-sport.test"),
    ("post@weingut-sonne.test", ["5 aspmx3.googlemail.com."], "google", "imap.gmail.com", "post@weingut-sonne.test"),
    ("ich@meier-privat.test", ["10 mx01.mail.icloud.com.", "10 mx02.mail.icloud.com."], "icloud", "imap.mail.me.com",
     None),
    ("info@laden-am-eck.test", ["1 mta5.am0.yahoodns.net.", "1 mta6.am0.yahoodns.net."], "yahoo",
     "imap.mail.yahoo.com", "info@laden-am-eck.test"),
    ("info@alte-firma.test", ["1 mx-aol.mail.gm0.yahoodns.net."], "aol", "imap.aol.com", "info@alte-firma.test"),
    ("info@studio-zahn.test", ["10 mx.zoho.eu.", "20 mx2.zoho.eu.", "50 mx3.zoho.eu."], "zoho", "imappro.zoho.eu",
     "info@studio-zahn.test"),
    ("info@export-west.test", ["10 mx.zoho.com."], "zoho", "imappro.zoho.com", "info@export-west.test"),
    ("info@baeckerei-korn.test", ["10 mx00.gmx.net.", "10 mx01.gmx.net."], "gmx", "imap.gmx.net",
     "info@baeckerei-korn.test"),
    ("info@friseur-schnitt.test", ["10 mx00.emig.gmx.net.", "10 mx01.emig.gmx.net."], "gmx", "imap.gmx.net",
     "info@friseur-schnitt.test"),  # GMX/WEB.DE business: a company domain at 1&1 Mail & Media
    ("info@malerei-farbe.test", ["10 mx-ha01.web.de.", "10 mx-ha02.web.de."], "webde", "imap.web.de",
     "info"),  # WEB.DE's user name (ISPDB web.de.xml: %EMAILLOCALPART%)
    ("info@elektro-strom.test", ["10 mx00.t-online.de.", "10 mx01.t-online.de."], "tonline", "secureimap.t-online.de",
     "info@elektro-strom.test"),
    ("info@gaertnerei-gruen.test", ["5 smtpin.rzone.de."], "strato", "imap.strato.de", "info@gaertnerei-gruen.test"),
    ("info@reisebuero-welt.test", ["20 smtpin.rzone.de."], "strato", "imap.strato.de", "info@reisebuero-welt.test"),
    ("info@hotel-see.test", ["10 mx00.ionos.de.", "10 mx01.ionos.de."], "ionos", "imap.ionos.de",
     "info@hotel-see.test"),
    ("info@pension-berg.test", ["10 mx00.kundenserver.de.", "10 mx01.kundenserver.de."], "ionos", "imap.ionos.de",
     "info@pension-berg.test"),
    ("info@cafe-bohne.test", ["10 mx00.ionos.com."], "ionos", "imap.ionos.de", "info@cafe-bohne.test"),
    ("info@verlag-buch.test", ["10 mxext1.mailbox.org.", "10 mxext2.mailbox.org.", "20 mxext3.mailbox.org."],
     "mailboxorg", "imap.mailbox.org", "info@verlag-buch.test"),
    ("info@labor-test.test", ["10 www123.your-server.de.", "20 mx-backup.your-server.de."], "hetzner",
     "mail.your-server.de", "info@labor-test.test"),
    ("info@kfz-werkstatt.test", ["10 mail.your-server.de."], "hetzner", "mail.your-server.de",
     "info@kfz-werkstatt.test"),
    ("info@tischlerei-span.test", ["10 w0123456.kasserver.com."], "allinkl", "w0123456.kasserver.com",
     "info@tischlerei-span.test"),
    ("info@optiker-blick.test", ["10 w00abcde.kasserver.com."], "allinkl", "w00abcde.kasserver.com",
     "info@optiker-blick.test"),
    ("info@apotheke-kraut.test", ["10 mx0.ispgateway.de.", "20 mx1.ispgateway.de."], "domainfactory", "sslin.df.eu",
     "info@apotheke-kraut.test"),
    ("info@architekt-plan.test", ["10 mx00.udag.de.", "20 mx01.udag.de."], "udag", "imaps.udag.de",
     "info@architekt-plan.test"),
    ("info@steuer-kanzlei.test", ["10 mx0.hosteurope.de.", "20 mx1.hosteurope.de."], "hosteurope",
     "imap.hosteurope.de", "info@steuer-kanzlei.test"),
    ("info@werbeagentur-pixel.test", ["10 mx01.agenturserver.de.", "20 mx02.agenturserver.de."], "mittwald",
     "mail.agenturserver.de", "info@werbeagentur-pixel.test"),
    ("info@dachdecker-ziegel.test", ["10 MX00.IONOS.DE."], "ionos", "imap.ionos.de", "info@dachdecker-ziegel.test"),
    # equal preferences, an unknown host sorting first: the known one still names the provider
    ("info@metzgerei-wurst.test", ["10 a-relay.metzgerei-wurst.test.", "10 mx00.gmx.net."], "gmx", "imap.gmx.net",
     "info@metzgerei-wurst.test"),
    # nobody in the table: the user types the server (the form is empty, "Anderer IMAP-Anbieter")
    ("info@eigener-server.test", ["10 mail.eigener-server.test."], "imap_other", None, None),
    # look-alikes of table hosts are strangers
    ("info@falle-eins.test", ["10 mx00.gmx.net.evil.test."], "imap_other", None, None),
    ("info@falle-zwei.test", ["10 aspmx.l.google.com.evil.test."], "imap_other", None, None),
    ("info@falle-drei.test", ["10 firma.mail.protection.outlook.com.evil.test."], "imap_other", None, None),
    ("info@falle-vier.test", ["10 notyour-server.de."], "imap_other", None, None),
    ("info@falle-fuenf.test", ["10 w0123456.kasserver.com.evil.test."], "imap_other", None, None),
    # a null MX (RFC 7505): the domain receives no mail
    ("info@keine-post.test", ["0 ."], "unknown", None, None),
]


def test_the_table_covers_at_least_forty_addresses():
    assert len(BY_MX) >= 40 and len(BY_DOMAIN) >= 30
    assert len({address for address, *_ in BY_MX}) == len(BY_MX)


def test_the_table_covers_every_provider_the_market_uses():
    named = {row[1] for row in BY_DOMAIN} | {row[2] for row in BY_MX}
    # Telekom's business mailboxes are in the picker only: their server is named in the Homepage Center.
    detectable = {p.key for p in provider_table.PROVIDERS} - {"telekom_business"}
    assert detectable - named == set()


def _server(result) -> tuple:
    server = result.server or {}
    return (result.provider, server.get("host"), server.get("port"), server.get("security"), server.get("username"))


def _expected(provider, host, username) -> tuple:
    return (provider, host, 993 if host else None, "ssl" if host else None, username if host else None)


@pytest.mark.parametrize("address, mx, provider, host, username", BY_MX)
def test_it_knows_hosted_company_domains_by_mx(fake_dns, address, mx, provider, host, username):
    domain = address.rpartition("@")[2]
    fake_dns.add(domain, MX=mx)
    result = detect(address)
    assert (result.source, result.valid) == ("none" if provider == "unknown" else "mx", True)
    got = _server(result)
    assert got[:4] == _expected(provider, host, username)[:4]
    if username:
        assert got[4] == username
    # The hoster's own server, even one named after the MX, is no stranger: nothing to confirm.
    assert not result.needs_confirmation
    assert fake_dns.queries == [(domain, "MX")]


def test_one_local_nameserver_answers_the_whole_table(fake_dns):
    for address, mx, *_ in BY_MX:
        fake_dns.add(address.rpartition("@")[2], MX=mx)
    got = [_server(detect(address)) for address, *_ in BY_MX]
    expected = [_expected(provider, host, username) for _a, _mx, provider, host, username in BY_MX]
    assert [g if e[4] else g[:4] + (None,) for g, e in zip(got, expected)] == expected
    assert len(fake_dns.queries) == len(BY_MX)  # one MX question per domain, nothing else


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


@pytest.mark.django_db
@pytest.mark.parametrize("address", ["not-an-address", "kunde@", "@posteo.de", "kunde@@posteo.de", "ku nde@posteo.de"])
def test_the_login_form_refuses_what_is_not_an_address(client, user, make_account, address):
    from django.urls import reverse

    from migration import steps
    from migration.models import Migration, MigrationEvent
    from migration.services import start_migration

    migration = start_migration(user=user, account=make_account(user, "kunde@posteo.de"))
    steps.run_migration(migration.pk)
    events = MigrationEvent.objects.filter(migration=migration).count()
    client.force_login(user)
    response = client.post(reverse("migration-credentials", args=[migration.pk]), {
        "address": address, "password": "geheim", "host": "posteo.de", "port": 993, "security": "ssl",
        "username": "kunde@posteo.de"})
    assert response.status_code == 400
    assert "Bitte gültige E-Mail-Adresse eingeben." in response.content.decode()
    migration = Migration.objects.get(pk=migration.pk)
    assert (migration.status, migration.secret_encrypted, migration.connection) == ("awaiting_user", "", {})
    assert MigrationEvent.objects.filter(migration=migration).count() == events
