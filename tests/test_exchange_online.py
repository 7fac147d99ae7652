"""Exchange Online is not Exchange on-premises: an Exchange Online host goes to the Microsoft 365 (Graph) path."""

import pytest
from django.urls import reverse

from migration import detection, steps
from migration.exchange.online import challenge_is_exchange_online, is_exchange_online
from migration.models import Migration, MigrationEvent
from migration.services import start_migration
from tests.fakes.fixtures import fake_dns, hosts, web  # noqa: F401

EXO_CHALLENGE = ('Bearer client_id="00000002-0000-0ff1-ce00-000000000000", trusted_issuers="00000001-0000-0000-'
                 'c000-000000000000@*", token_types="app_asserted_user_v1 service_asserted_app_v1", '
                 'authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", Basic Realm=""')


@pytest.mark.parametrize("host, online", [
    ("outlook.office365.com", True), ("OUTLOOK.OFFICE365.COM.", True), ("outlook.office.com", True),
    ("autodiscover-s.outlook.com", True), ("outlook.office365.us", True), ("partner.outlook.cn", True),
    ("mail.firma.de", False), ("outlook.office365.com.evil.example", False), ("myoutlook.com", False),
    ("exchange.firma-outlook.com", False), ("", False),
])
def test_it_tells_exchange_online_hosts_from_on_premises_ones(host, online):
    assert is_exchange_online(host) is online


def test_it_recognises_exchange_onlines_anonymous_challenge():
    assert challenge_is_exchange_online(EXO_CHALLENGE)
    assert not challenge_is_exchange_online("Negotiate, NTLM")
    assert not challenge_is_exchange_online('Bearer authorization_uri="https://login.microsoftonline.com.evil.example/"')


# --- the Exchange step --------------------------------------------------------------------------------------------


@pytest.fixture
def exchange_step(db, user, make_account):
    """A migration waiting on the "Microsoft Exchange" step (chosen in the picker)."""
    migration = start_migration(user=user, account=make_account(user, "anna@firma.test"))
    steps.run_migration(migration.pk)
    Migration.objects.filter(pk=migration.pk).update(provider_kind="exchange")
    return Migration.objects.get(pk=migration.pk)


@pytest.mark.django_db
@pytest.mark.parametrize("server, password", [
    ("outlook.office365.com", "geheim"),
    ("https://outlook.office365.com/EWS/Exchange.asmx", "geheim"),
    ("autodiscover-s.outlook.com", ""),  # no password typed yet: it is not needed anyway
])
def test_it_sends_an_exchange_online_host_to_the_microsoft_365_sign_in(client, user, exchange_step, server, password):
    client.force_login(user)
    response = client.post(reverse("migration-credentials", args=[exchange_step.pk]), {
        "address": "anna@firma.test", "server": server, "username": "anna@firma.test", "password": password,
        "auth_type": "auto"}, follow=True)
    migration = Migration.objects.get(pk=exchange_step.pk)
    assert (migration.provider_kind, migration.status) == ("microsoft", "awaiting_user")
    assert migration.connection == {} and migration.detected["exchange_online"] is True
    event = MigrationEvent.objects.filter(migration=migration).latest("pk")
    assert event.reason.startswith("Exchange Online host ") and "Microsoft 365 (Graph)" in event.reason
    page = response.content.decode()
    assert "outlook" in page and "gehört zu Exchange Online (Microsoft 365)" in page and "ab Oktober 2026" in page and "April 2027" in page
    assert 'data-testid="microsoft-sign-in"' in page and 'data-testid="exchange-online"' in page


@pytest.mark.django_db
def test_it_keeps_an_on_premises_host_on_the_exchange_step(client, user, exchange_step):
    client.force_login(user)
    response = client.post(reverse("migration-credentials", args=[exchange_step.pk]), {
        "address": "anna@firma.test", "server": "mail.firma.test", "username": "anna", "password": "",
        "auth_type": "auto"})
    assert response.status_code == 400  # the password is missing: the Exchange form asks for it
    assert Migration.objects.get(pk=exchange_step.pk).provider_kind == "exchange"


@pytest.mark.django_db
def test_it_explains_the_switch_in_english_too(client, user, exchange_step):
    client.force_login(user)
    client.cookies["django_language"] = "en"
    page = client.post(reverse("migration-credentials", args=[exchange_step.pk]), {
        "address": "anna@firma.test", "server": "outlook.office365.com", "username": "anna", "password": "x",
        "auth_type": "auto"}, follow=True).content.decode()
    assert "belongs to Exchange Online (Microsoft 365)" in page and "Oktober" not in page


@pytest.mark.django_db
def test_a_v2_exchange_account_at_exchange_online_migrates_through_microsoft(user, make_account):
    account = make_account(user, "anna@firma.test", provider_kind="exchange",
                           ews_url="https://outlook.office365.com/EWS/Exchange.asmx")
    migration = start_migration(user=user, account=account)
    steps.run_migration(migration.pk)
    migration = Migration.objects.get(pk=migration.pk)
    assert migration.provider_kind == "microsoft" and migration.detected["exchange_online"] is True


@pytest.mark.django_db
def test_a_v2_exchange_account_on_premises_stays_on_ews(user, make_account):
    account = make_account(user, "anna@firma.test", provider_kind="exchange",
                           ews_url="https://mail.firma.test/EWS/Exchange.asmx")
    migration = start_migration(user=user, account=account)
    steps.run_migration(migration.pk)
    assert Migration.objects.get(pk=migration.pk).provider_kind == "exchange"


# --- detection: Autodiscover that answers from Exchange Online ----------------------------------------------------


@pytest.fixture
def autodiscover(settings, web, hosts, monkeypatch, fake_dns):
    settings.DETECTION_HTTP_LOOKUPS = True
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web()
    settings.ISPDB_URL = server.url("/ispdb/")
    monkeypatch.setattr(detection, "AUTOCONFIG_URL", f"http://autoconfig.{{domain}}:{server.port}/x.xml")
    monkeypatch.setattr(detection, "AUTODISCOVER_URL",
                        f"http://autodiscover.{{domain}}:{server.port}/autodiscover/autodiscover.xml")
    hosts["autoconfig.firma.test"] = hosts["autodiscover.firma.test"] = "127.0.0.1"
    fake_dns.add("firma.test", MX=["10 mail.firma.test."])
    return server


def test_it_detects_exchange_online_by_its_autodiscover_challenge(autodiscover):
    autodiscover.routes["/autodiscover/autodiscover.xml"] = (401, {"WWW-Authenticate": EXO_CHALLENGE}, "")
    result = detection.detect("anna@firma.test")
    assert (result.provider, result.source, result.server) == ("microsoft365", "autodiscover", None)


def test_it_detects_exchange_online_by_the_ews_url_autodiscover_names(autodiscover):
    autodiscover.routes["/autodiscover/autodiscover.xml"] = (200, {}, (
        '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response '
        'xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"><Account><Protocol>'
        "<Type>EXPR</Type><EwsUrl>https://outlook.office365.com/EWS/Exchange.asmx</EwsUrl></Protocol></Account>"
        "</Response></Autodiscover>"))
    assert detection.detect("anna@firma.test").provider == "microsoft365"


def test_an_on_premises_autodiscover_stays_exchange(autodiscover):
    autodiscover.routes["/autodiscover/autodiscover.xml"] = (401, {"WWW-Authenticate": "Negotiate, NTLM"}, "")
    assert detection.detect("anna@firma.test").provider == "exchange"


@pytest.mark.django_db
def test_the_microsoft_step_explains_exchange_online_found_by_autodiscover(autodiscover, client, user, make_account):
    autodiscover.routes["/autodiscover/autodiscover.xml"] = (401, {"WWW-Authenticate": EXO_CHALLENGE}, "")
    migration = start_migration(user=user, account=make_account(user, "anna@firma.test"))
    steps.run_migration(migration.pk)
    migration = Migration.objects.get(pk=migration.pk)
    assert migration.provider_kind == "microsoft" and migration.detected["exchange_online"] is True
    client.force_login(user)
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert 'data-testid="exchange-online"' in page and "EWS" in page
