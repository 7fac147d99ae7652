"""The worker's detecting step uses provider detection (local nameserver, local web server)
and the login mask shows what it found: a form, a choice, or a confirmation first."""

import pytest
from django.urls import reverse

from migration import detection, services, steps
from migration.models import Migration
from sync.egress import check_rate
from tests.fakes.fixtures import fake_dns, hosts, web  # noqa: F401

pytestmark = pytest.mark.django_db


def _detected(user, account) -> Migration:
    migration = services.start_migration(user=user, account=account)
    assert steps.run_migration(migration.pk) == "awaiting_user"
    return Migration.objects.get(pk=migration.pk)


def _page(client, migration, **headers) -> str:
    return client.get(reverse("migration-detail", args=[migration.pk]), **headers).content.decode()


def test_an_ionos_address_gets_a_choice_and_no_form_until_the_user_picks(signed_in, user, make_account, fake_dns,
                                                                        settings):
    settings.MS_CLIENT_ID, settings.MS_CLIENT_SECRET = "client-id", "client-secret"  # a registered Microsoft app
    fake_dns.add("kanzlei.test", MX=["10 mx00.ionos.de.", "10 mx01.ionos.de."])
    migration = _detected(user, make_account(user, "info@kanzlei.test"))
    assert migration.detected["candidates"] == ["ionos", "microsoft365"] and "chosen" not in migration.detected
    page = _page(signed_in, migration)
    assert 'data-testid="candidates"' in page and 'name="password"' not in page
    assert "Weiter mit Microsoft" in page and "Weiter mit IMAP (IONOS)" in page and 'data-testid="back"' in page

    signed_in.post(reverse("migration-choose", args=[migration.pk]), {"provider": "ionos"})
    migration.refresh_from_db()
    assert migration.provider_kind == "imap" and migration.detected["host"] == "imap.ionos.de"
    page = _page(signed_in, migration)
    assert 'name="password"' in page and 'value="imap.ionos.de"' in page and 'data-testid="candidates"' not in page

    signed_in.post(reverse("migration-choose", args=[migration.pk]), {"provider": "microsoft365"})
    migration.refresh_from_db()
    assert migration.provider_kind == "microsoft"
    assert "Bei Microsoft anmelden" in _page(signed_in, migration)


def test_a_microsoft_365_mx_leads_an_imap_account_to_the_microsoft_sign_in(user, make_account, fake_dns):
    fake_dns.add("firma.test", MX=["0 firma-test.mail.protection.outlook.com."])
    migration = _detected(user, make_account(user, "anna@firma.test", imap_host="outlook.office365.com"))
    assert migration.provider_kind == "microsoft" and migration.detected["tenant"] == "firma.test"


def test_the_v2_accounts_own_server_wins_over_the_table(user, make_account, fake_dns):
    account = make_account(user, "anna@gmx.de", imap_host="imap.gmx.com", imap_port=993, username="anna-alt")
    migration = _detected(user, account)
    assert (migration.detected["host"], migration.detected["username"]) == ("imap.gmx.com", "anna-alt")
    assert migration.detected["confirm_host"] == "" and fake_dns.queries == []  # the table knew gmx.de


def test_hints_are_shown_in_the_readers_language(signed_in, user, make_account):
    migration = _detected(user, make_account(user, "oma@web.de"))
    assert migration.detected["username"] == "oma"
    assert "WEB.DE meldet Sie mit dem Teil vor dem @ an." in _page(signed_in, migration)
    english = _page(signed_in, migration, HTTP_ACCEPT_LANGUAGE="en")
    assert "WEB.DE signs you in with the part before the @." in english


AUTOCONFIG = """<?xml version="1.0"?><clientConfig version="1.1"><emailProvider id="verein.test">
<incomingServer type="imap"><hostname>imap.fremdhoster.example</hostname><port>993</port><socketType>SSL</socketType>
<username>%EMAILADDRESS%</username></incomingServer></emailProvider></clientConfig>"""


@pytest.fixture
def foreign_proposal(settings, monkeypatch, user, make_account, fake_dns, hosts, web):
    """autoconfig.verein.test (a local web server) proposes an IMAP server outside the user's domain."""
    server = web({"/mail/config-v1.1.xml": (200, {}, AUTOCONFIG)})
    monkeypatch.setattr(detection, "AUTOCONFIG_URL", f"http://autoconfig.{{domain}}:{server.port}/mail/config-v1.1.xml")
    monkeypatch.setattr(detection, "AUTODISCOVER_URL", server.url("/autodiscover/{domain}"))
    settings.ISPDB_URL = server.url("/ispdb/")  # nothing of this test may leave the machine
    hosts["autoconfig.verein.test"] = "127.0.0.1"
    settings.DETECTION_HTTP_LOOKUPS = True
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    return _detected(user, make_account(user, "kasse@verein.test"))


def _credentials(client, migration, **overrides):
    data = {"address": migration.account.address, "password": "geheim", "host": "imap.fremdhoster.example",
            "port": 993, "security": "ssl", "username": migration.account.address, **overrides}
    return client.post(reverse("migration-credentials", args=[migration.pk]), data)


def test_credentials_for_a_detected_server_outside_the_domain_need_a_yes_first(signed_in, foreign_proposal):
    migration = foreign_proposal
    assert migration.detected["source"] == "autoconfig"
    assert migration.detected["confirm_host"] == "imap.fremdhoster.example"
    page = _page(signed_in, migration)
    assert 'data-testid="confirm-host"' in page and "imap.fremdhoster.example" in page

    response = _credentials(signed_in, migration)
    assert response.status_code == 400
    assert "gehört nicht zu Ihrer E-Mail-Domain" in response.content.decode()
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"  # nothing sent anywhere

    # A server the user typed in themselves is their choice: no question.
    assert _credentials(signed_in, migration, host="imap.verein.test").status_code == 302
    assert Migration.objects.get(pk=migration.pk).connection["host"] == "imap.verein.test"


def test_a_confirmed_foreign_server_is_accepted(signed_in, foreign_proposal):
    assert _credentials(signed_in, foreign_proposal, confirm_host="on").status_code == 302
    assert Migration.objects.get(pk=foreign_proposal.pk).status == "verifying"


def test_too_many_attempts_are_refused_with_a_clear_message_and_nothing_lost(signed_in, user, make_account, settings):
    settings.EGRESS_RATE_PER_USER = 2
    migration = _detected(user, make_account(user, "anna@gmx.de"))
    check_rate(user.pk, "imap.gmx.net", 993)
    check_rate(user.pk, "imap.gmx.net", 993)
    response = _credentials(signed_in, migration, host="imap.gmx.net")
    assert response.status_code == 429
    page = response.content.decode()
    assert "Zu viele Verbindungsversuche" in page and 'value="imap.gmx.net"' in page
    assert "geheim" not in page  # the password is never rendered back
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"


def test_the_exchange_form_checks_its_input(signed_in, user, make_account):
    migration = _detected(user, make_account(user, "anna@firma.test", provider_kind="exchange"))
    url = reverse("migration-credentials", args=[migration.pk])
    data = {"address": "anna@firma.test", "username": "FIRMA\\anna", "password": "pw", "auth_type": "auto"}
    response = signed_in.post(url, {**data, "server": "http://mail.firma.test/EWS/Exchange.asmx"})
    assert response.status_code == 400 and "https-Adresse" in response.content.decode()
    response = signed_in.post(url, {**data, "server": "mail.firma.test", "ca_pem": "kein Zertifikat"})
    assert response.status_code == 400 and "kein Zertifikat im PEM-Format" in response.content.decode()
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"

    assert signed_in.post(url, {**data, "server": "mail.firma.test:8443"}).status_code == 302
    migration.refresh_from_db()
    assert migration.connection == {"ews_url": "https://mail.firma.test:8443/EWS/Exchange.asmx",
                                    "username": "FIRMA\\anna", "auth_type": "auto", "ca_pem": ""}
    assert "pw" not in str(migration.connection)
