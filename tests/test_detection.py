"""Provider detection: the built-in table, MX records from a local nameserver, HTTP lookups, the cache."""

import json
import socket

import pytest

from migration import detection
from migration.detection import detect
from sync.providers import APP_PASSWORD_HINT
from tests.fakes.fixtures import fake_dns, hosts, record_connections, web  # noqa: F401

AUTOCONFIG = """<?xml version="1.0"?>
<clientConfig version="1.1"><emailProvider id="{domain}"><domain>{domain}</domain>
  <incomingServer type="pop3"><hostname>pop.{domain}</hostname><port>995</port>
    <socketType>SSL</socketType></incomingServer>
  <incomingServer type="imap"><hostname>plain.{domain}</hostname><port>143</port><socketType>plain</socketType>
    <username>%EMAILADDRESS%</username></incomingServer>
  <incomingServer type="imap"><hostname>{host}</hostname><port>{port}</port><socketType>{socket}</socketType>
    <username>{username}</username></incomingServer>
</emailProvider></clientConfig>"""


def _autoconfig(domain, host, port=993, socket="SSL", username="%EMAILADDRESS%"):
    return AUTOCONFIG.format(domain=domain, host=host, port=port, socket=socket, username=username)


@pytest.mark.parametrize("address, provider, host, username", [
    ("anna@gmx.de", "gmx", "imap.gmx.net", "anna@gmx.de"),
    ("anna@GMX.net", "gmx", "imap.gmx.net", "anna@GMX.net"),
    ("anna@web.de", "webde", "imap.web.de", "anna"),
    ("anna@t-online.de", "tonline", "secureimap.t-online.de", "anna@t-online.de"),
    ("anna@strato.de", "strato", "imap.strato.de", "anna@strato.de"),
    ("anna@outlook.com", "microsoft365", None, None),
    ("anna@hotmail.de", "microsoft365", None, None),
])
def test_it_knows_providers_from_the_table_without_dns(fake_dns, address, provider, host, username):
    result = detect(address)
    assert (result.provider, result.source, result.candidates) == (provider, "table", [provider])
    assert (result.server or {}).get("host") == host and (result.server or {}).get("username") == username
    assert not result.needs_confirmation and fake_dns.queries == []


def test_it_reports_ionos_as_a_choice_from_the_table(fake_dns):
    result = detect("anna@ionos.de")
    assert result.provider == "ionos" and result.candidates == ["ionos", "microsoft365"] and result.ambiguous
    assert result.server["host"] == "imap.ionos.de"


@pytest.mark.parametrize("mx, provider, host", [
    (["0 firma-de.mail.protection.outlook.com."], "microsoft365", None),
    (["10 mx00.gmx.net.", "10 mx01.gmx.net."], "gmx", "imap.gmx.net"),
    (["10 mx-ha01.web.de.", "20 mx-ha02.web.de."], "webde", "imap.web.de"),
    (["10 mx00.t-online.de.", "10 mx02.t-online.de."], "tonline", "secureimap.t-online.de"),
    (["5 smtpin.rzone.de."], "strato", "imap.strato.de"),
    (["10 mx00.ionos.de.", "10 mx01.ionos.de."], "ionos", "imap.ionos.de"),
    (["10 mx00.kundenserver.de.", "20 mx01.kundenserver.de."], "ionos", "imap.ionos.de"),
    # The preferred MX is unknown (a filter service), a later one tells the provider.
    (["5 filter.spamschutz.test.", "20 mx00.gmx.net."], "gmx", "imap.gmx.net"),
])
def test_it_detects_providers_by_mx_from_the_local_nameserver(fake_dns, mx, provider, host):
    fake_dns.add("firma.test", MX=mx)
    result = detect("anna@firma.test")
    assert (result.provider, result.source) == (provider, "mx")
    assert (result.server or {}).get("host") == host
    by_preference = sorted((int(record.split()[0]), record.split()[1].rstrip(".")) for record in mx)
    assert result.mx == [host for _preference, host in by_preference]
    # Well-known provider servers come from the built-in table: nothing to confirm.
    assert not result.needs_confirmation
    assert fake_dns.queries == [("firma.test", "MX")]


def test_it_never_guesses_between_ionos_and_microsoft(fake_dns):
    fake_dns.add("kanzlei.test", MX=["10 mx00.ionos.de.", "10 mx01.ionos.de."])
    result = detect("info@kanzlei.test").as_dict()
    assert result["candidates"] == ["ionos", "microsoft365"] and result["ambiguous"]
    assert "Bei IONOS kann das Postfach auch über Microsoft laufen (Microsoft Exchange bei IONOS)." in result["hints"]


def test_it_uses_the_local_part_for_webde_found_by_mx(fake_dns):
    fake_dns.add("familie.test", MX=["10 mx-ha01.web.de."])
    result = detect("oma@familie.test")
    assert result.server["username"] == "oma" and result.server["username_form"] == "localpart"
    assert "WEB.DE meldet Sie mit dem Teil vor dem @ an." in [str(hint) for hint in result.hints]


@pytest.mark.parametrize("address, expected", [
    ("anna@gmx.de", "IMAP muss in den GMX-Einstellungen"),
    ("anna@web.de", "IMAP muss in den WEB.DE-Einstellungen"),
    ("anna@t-online.de", "separate E-Mail-Passwort"),
])
def test_it_gives_the_provider_hints_in_german(address, expected):
    hints = detect(address).as_dict()["hints"]
    assert any(expected in hint for hint in hints)
    assert str(APP_PASSWORD_HINT) in hints


def test_it_gives_no_imap_hints_for_microsoft():
    assert detect("anna@outlook.com").hints == []


def test_it_calls_an_unknown_mx_another_imap_provider(fake_dns):
    fake_dns.add("verein.test", MX=["10 mail.verein.test."])
    result = detect("kasse@verein.test")
    assert (result.provider, result.candidates, result.source) == ("imap_other", ["imap_other"], "mx")
    assert result.server is None
    assert result.as_dict()["username"] == "kasse@verein.test"


@pytest.mark.parametrize("records", [None, {"A": ["192.0.2.10"]}, {"MX": ["0 ."]}])
def test_it_reports_unknown_without_mail_servers(fake_dns, records):
    if records is not None:
        fake_dns.add("leer.test", **records)
    result = detect("anna@leer.test")
    assert (result.provider, result.candidates, result.source) == ("unknown", [], "none")


@pytest.mark.parametrize("address", ["", "anna", "anna@", "@gmx.de", "anna@-kaputt-.de", "anna@localhost",
                                     "anna@exa mple.de", "anna@" + "a" * 64 + ".de"])
def test_it_answers_unknown_for_addresses_that_are_not_addresses(fake_dns, address):
    assert detect(address).provider == "unknown" and fake_dns.queries == []


def test_it_looks_up_international_domains_in_punycode(fake_dns):
    fake_dns.add("xn--bcher-kva.test", MX=["10 mx00.gmx.net."])
    result = detect("anna@bücher.test")
    assert result.provider == "gmx" and result.domain == "xn--bcher-kva.test"


# --- cache ------------------------------------------------------------------------------------------------------


def test_it_caches_per_domain_and_derives_the_user_name_per_address(fake_dns):
    fake_dns.add("familie.test", MX=["10 mx-ha01.web.de."])
    assert detect("oma@familie.test").server["username"] == "oma"
    assert detect("opa@familie.test").server["username"] == "opa"
    assert fake_dns.queries == [("familie.test", "MX")]


def test_it_does_not_cache_a_dns_timeout(fake_dns):
    fake_dns.silent.add("langsam.test.")
    assert detect("anna@langsam.test").provider == "unknown"
    fake_dns.silent.clear()
    fake_dns.add("langsam.test", MX=["10 mx00.gmx.net."])
    assert detect("anna@langsam.test").provider == "gmx"


def test_it_can_switch_the_cache_off(fake_dns, settings):
    settings.DETECTION_CACHE_SECONDS = 0
    fake_dns.add("firma.test", MX=["10 mx00.gmx.net."])
    detect("anna@firma.test")
    detect("anna@firma.test")
    assert len(fake_dns.queries) == 2


def test_it_gives_json_ready_results(fake_dns):
    fake_dns.add("kanzlei.test", MX=["10 mx00.ionos.de."])
    data = json.loads(json.dumps(detect("info@kanzlei.test").as_dict()))
    assert data["provider"] == "ionos" and data["server"]["host"] == "imap.ionos.de" and data["server"]["port"] == 993
    assert data["host"] == "imap.ionos.de" and data["label"] == "IONOS" and data["source"] == "mx"


# --- optional HTTP lookups ----------------------------------------------------------------------------------------


@pytest.fixture
def http_lookups(settings, web, hosts, monkeypatch, fake_dns):
    """Autoconfig, ISPDB and Autodiscover served by one local web server; the domain is firma.test."""
    settings.DETECTION_HTTP_LOOKUPS = True
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web()
    settings.ISPDB_URL = server.url("/ispdb/")
    monkeypatch.setattr(detection, "AUTOCONFIG_URL", f"http://autoconfig.{{domain}}:{server.port}/mail/config-v1.1.xml")
    monkeypatch.setattr(detection, "AUTODISCOVER_URL",
                        f"http://autodiscover.{{domain}}:{server.port}/autodiscover/autodiscover.xml")
    hosts["autoconfig.firma.test"] = hosts["autodiscover.firma.test"] = "127.0.0.1"
    fake_dns.add("firma.test", MX=["10 mail.firma.test."])
    return server


def test_it_makes_no_http_lookups_unless_enabled(http_lookups, settings):
    settings.DETECTION_HTTP_LOOKUPS = False
    assert detect("anna@firma.test").provider == "imap_other"
    assert http_lookups.requests == []


def test_it_takes_imap_settings_from_the_domains_autoconfig(http_lookups):
    http_lookups.routes["/mail/config-v1.1.xml"] = (200, {}, _autoconfig("firma.test", "imap.firma.test", 993, "SSL",
                                                                         "%EMAILLOCALPART%"))
    result = detect("anna@firma.test")
    assert (result.provider, result.source) == ("imap_other", "autoconfig")
    assert result.server == {"protocol": "imap", "host": "imap.firma.test", "port": 993, "security": "ssl",
                             "username_form": "localpart", "username": "anna"}
    assert not result.needs_confirmation  # inside the user's own domain


def test_it_asks_before_proposing_a_server_outside_the_users_domain(http_lookups):
    http_lookups.routes["/mail/config-v1.1.xml"] = (200, {}, _autoconfig("firma.test", "imap.hoster.example", 143,
                                                                         "STARTTLS"))
    result = detect("anna@firma.test").as_dict()
    assert result["needs_confirmation"] and result["confirm_host"] == "imap.hoster.example"
    assert result["server"]["security"] == "starttls" and result["server"]["port"] == 143


def test_it_recognises_a_known_provider_in_an_autoconfig_answer(http_lookups):
    http_lookups.routes["/mail/config-v1.1.xml"] = (200, {}, _autoconfig("firma.test", "imap.gmx.net"))
    result = detect("anna@firma.test")
    assert result.provider == "gmx" and not result.needs_confirmation


def test_it_asks_the_ispdb_by_domain_and_by_mx_domain(http_lookups, fake_dns):
    fake_dns.add("kunde.test", MX=["10 mx1.kleinhoster.example."])
    http_lookups.routes["/ispdb/kleinhoster.example"] = (200, {}, _autoconfig("kleinhoster.example",
                                                                              "imap.kleinhoster.example"))
    result = detect("anna@kunde.test")
    assert (result.provider, result.source, result.server["host"]) == ("imap_other", "autoconfig",
                                                                        "imap.kleinhoster.example")
    assert result.needs_confirmation
    assert [path for _m, path, _h, _b in http_lookups.requests] == ["/ispdb/kunde.test", "/ispdb/kleinhoster.example"]


def test_it_finds_exchange_by_an_autodiscover_asking_for_credentials(http_lookups):
    http_lookups.routes["/autodiscover/autodiscover.xml"] = (401, {"WWW-Authenticate": "Negotiate, NTLM"}, "")
    result = detect("anna@firma.test")
    assert (result.provider, result.source, result.candidates) == ("exchange", "autodiscover", ["exchange"])
    assert result.server == {"protocol": "ews", "url": "https://autodiscover.firma.test/EWS/Exchange.asmx",
                             "host": "autodiscover.firma.test", "port": 443}
    method, _path, _headers, body = http_lookups.requests[-1]
    assert method == "POST" and b"<EMailAddress>anna@firma.test</EMailAddress>" in body
    assert b"assword" not in body  # detection never sends credentials


def test_it_takes_the_ews_url_from_an_autodiscover_answer(http_lookups):
    http_lookups.routes["/autodiscover/autodiscover.xml"] = (200, {}, (
        '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response '
        'xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"><Account><Protocol>'
        "<Type>EXCH</Type><EwsUrl>https://owa.rechenzentrum.example/EWS/Exchange.asmx</EwsUrl></Protocol></Account>"
        "</Response></Autodiscover>"))
    result = detect("anna@firma.test")
    assert result.server["url"] == "https://owa.rechenzentrum.example/EWS/Exchange.asmx"
    assert result.needs_confirmation and result.confirm_host == "owa.rechenzentrum.example"


@pytest.mark.parametrize("answer", [(404, {}, "nope"), (200, {}, "<html>kein XML"), (401, {}, ""),
                                    (200, {}, '<!DOCTYPE x [<!ENTITY a "aaaa">]><clientConfig>&a;</clientConfig>')])
def test_it_ignores_useless_http_answers(http_lookups, answer):
    for path in ("/mail/config-v1.1.xml", "/autodiscover/autodiscover.xml"):
        http_lookups.routes[path] = answer
    assert detect("anna@firma.test").provider == "imap_other"


def test_it_sends_lookups_only_through_the_egress_guard(http_lookups, hosts, settings):
    hosts["autoconfig.firma.test"] = "10.0.0.7"  # the domain points its autoconfig inside our network
    hosts["autodiscover.firma.test"] = "169.254.169.254"
    with record_connections() as connections:
        result = detect("anna@firma.test")
    assert result.provider == "imap_other"
    assert all(host == "127.0.0.1" for host, _port in connections)  # only the ISPDB (allow-listed) was asked


AUTODISCOVER_ASKS_FOR_NTLM = (401, {"WWW-Authenticate": "Negotiate, NTLM"}, "")


@pytest.fixture
def outage():
    """A port on 127.0.0.1 that never answers: "timeout" accepts and stays silent, "refused" has no listener."""
    silent = socket.create_server(("127.0.0.1", 0), backlog=8)  # never accept()ed: the kernel completes the handshake
    with socket.create_server(("127.0.0.1", 0)) as closed:
        refused = closed.getsockname()[1]
    yield {"timeout": silent.getsockname()[1], "refused": refused}
    silent.close()


def _serve_source_from(source, port, monkeypatch, settings):
    if source == "autoconfig":
        monkeypatch.setattr(detection, "AUTOCONFIG_URL", f"http://autoconfig.{{domain}}:{port}/mail/config-v1.1.xml")
    elif source == "ispdb":
        settings.ISPDB_URL = f"http://127.0.0.1:{port}/ispdb/"
    else:
        monkeypatch.setattr(detection, "AUTODISCOVER_URL",
                            f"http://autodiscover.{{domain}}:{port}/autodiscover/autodiscover.xml")


def _unresolvable(errno):
    def lookup():
        raise socket.gaierror(errno, "lookup failed")
    return lookup


@pytest.mark.parametrize("kind", ["timeout", "refused"])
@pytest.mark.parametrize("source", ["autoconfig", "ispdb", "autodiscover"])
def test_it_does_not_cache_a_result_while_a_source_cannot_be_asked(http_lookups, outage, monkeypatch, settings,
                                                                    source, kind):
    settings.DETECTION_HTTP_TIMEOUT = 0.2
    _serve_source_from(source, outage[kind], monkeypatch, settings)
    assert detect("anna@firma.test").provider == "imap_other"
    # The outage is over: the next detection asks again instead of repeating "plain IMAP" for an hour.
    _serve_source_from(source, http_lookups.port, monkeypatch, settings)
    http_lookups.routes["/autodiscover/autodiscover.xml"] = AUTODISCOVER_ASKS_FOR_NTLM
    assert detect("anna@firma.test").provider == "exchange"


def test_it_caches_when_every_source_answered_even_with_not_found(http_lookups):
    assert detect("anna@firma.test").provider == "imap_other"
    asked = len(http_lookups.requests)
    http_lookups.routes["/autodiscover/autodiscover.xml"] = AUTODISCOVER_ASKS_FOR_NTLM
    assert detect("anna@firma.test").provider == "imap_other"
    assert len(http_lookups.requests) == asked


@pytest.mark.parametrize("errno, cached", [pytest.param(socket.EAI_NONAME, True, id="no-such-name"),
                                           pytest.param(socket.EAI_AGAIN, False, id="resolver-failed")])
def test_it_caches_missing_lookup_names_but_not_a_resolver_failure(http_lookups, hosts, errno, cached):
    # Most domains have no autoconfig or autodiscover name: that is an answer. A resolver that failed is not.
    hosts["autoconfig.firma.test"] = hosts["autodiscover.firma.test"] = _unresolvable(errno)
    assert detect("anna@firma.test").provider == "imap_other"
    hosts["autoconfig.firma.test"] = hosts["autodiscover.firma.test"] = "127.0.0.1"
    http_lookups.routes["/autodiscover/autodiscover.xml"] = AUTODISCOVER_ASKS_FOR_NTLM
    assert detect("anna@firma.test").provider == ("imap_other" if cached else "exchange")


@pytest.mark.parametrize("raw, parsed", [
    ("127.0.0.1:5353", ("127.0.0.1", 5353)), ("10.0.0.53", ("10.0.0.53", 53)), ("fd00::53", ("fd00::53", 53)),
    ("[fd00::53]:5353", ("fd00::53", 5353)),
])
def test_it_reads_nameservers_the_way_settings_accept_them(raw, parsed):
    assert detection._nameserver(raw) == parsed


@pytest.mark.parametrize("host, ask", [
    ("imap.firma.test", False), ("firma.test", False), ("IMAP.Firma.Test.", False), ("imap.gmx.net", False),
    ("imap.firma.test.evil.example", True), ("evilfirma.test", True), ("imap.hoster.example", True),
])
def test_it_asks_before_sending_credentials_outside_the_domain(host, ask):
    assert detection.host_needs_confirmation("firma.test", host) is ask


def test_it_translates_hints_when_english_is_active():
    from django.utils import translation

    with translation.override("en"):
        hints = detect("oma@web.de").as_dict()["hints"]
    assert not any("meldet Sie" in hint for hint in hints)
