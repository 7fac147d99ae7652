"""The complete egress guard: forbidden targets over IMAP, EWS and HTTP, pinning, redirects, rate limits.

A refused target must be refused before any connection: those tests run
inside no_connections(), which fails on any connect() at all.
"""

import socket

import pytest

from portal.devservers import free_port
from sync import egress
from sync.exchange import client as ews
from sync.egress import EgressRefused, TlsFailed, guarded_get, is_allowed
from sync.imap.client import ImapSettings, MailboxError, open_mailbox
from tests.fakes.fixtures import hosts, no_connections, record_connections, web  # noqa: F401

# Every spelling resolves without DNS: numeric forms, IDNA look-alikes, /etc/hosts.
FORBIDDEN = [
    # loopback
    "127.0.0.1", "127.0.0.2", "127.1", "127.255.255.254", "0x7f.1", "0x7f000001", "2130706433", "017700000001",
    "0177.0.0.1", "\u246b7.0.0.1", "127\u30020\u30020\u30021", "localhost", "LOCALHOST",
    # unspecified
    "0.0.0.0", "0", "0x0",
    # private
    "10.0.0.1", "10.1", "012.0.0.1", "0xa000001", "167772161", "172.16.0.1", "172.31.255.254", "192.168.0.1",
    "0xc0a80101",
    # link-local and cloud metadata
    "169.254.169.254", "0251.0376.0251.0376", "0xa9fea9fe", "2852039166", "169.254.0.1",
    # CGNAT (Alibaba's metadata service lives there), benchmarking, reserved, documentation, broadcast
    "100.64.0.1", "100.100.100.200", "100.127.255.254", "198.18.0.1", "192.0.0.170", "192.0.2.1", "240.0.0.1",
    "255.255.255.255", "192.88.99.1",
    # multicast
    "224.0.0.1", "239.255.255.250", "ff02::1",
    # IPv6 loopback, unspecified, link-local, site-local, unique-local (AWS metadata over IPv6)
    "::1", "0:0:0:0:0:0:0:1", "::", "fe80::1", "fe80::1%lo", "fec0::1", "fc00::1", "fd00:ec2::254",
    # IPv4-mapped, IPv4-compatible and SIIT forms of forbidden IPv4 addresses
    "::ffff:127.0.0.1", "::ffff:7f00:1", "0:0:0:0:0:ffff:7f00:1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "::ffff:a9fe:a9fe", "::127.0.0.1", "::a9fe:a9fe", "::ffff:0:127.0.0.1",
    # NAT64 (well-known and local-use prefixes), 6to4, Teredo, documentation
    "64:ff9b::127.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::10.0.0.1", "64:ff9b:1::a9fe:a9fe",
    "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2002:c0a8:101::1", "2002:a00:1::1", "2001::1", "2001:db8::1",
]


@pytest.fixture(autouse=True)
def _strict_policy(settings):
    settings.EGRESS_ALLOW_NETWORKS = []


def _url_host(host: str) -> str:
    return f"[{host.replace('%', '%25')}]" if ":" in host else host


def test_it_has_at_least_forty_forbidden_targets():
    assert len(FORBIDDEN) >= 40 and len(set(FORBIDDEN)) == len(FORBIDDEN)


@pytest.mark.parametrize("host", FORBIDDEN)
def test_it_refuses_forbidden_targets_over_imap_before_connecting(host):
    with no_connections(), pytest.raises(MailboxError) as error:
        open_mailbox(ImapSettings(host, 993, "ssl", "anna"), "geheim")
    assert error.value.code == "unreachable" and isinstance(error.value.__context__, EgressRefused)


@pytest.mark.parametrize("host", FORBIDDEN)
def test_it_refuses_forbidden_targets_over_ews_before_connecting(host):
    server = ews.EwsSettings(url=f"https://{_url_host(host)}/EWS/Exchange.asmx", username="CORP\\anna",
                             address="anna@example.com", auth_type="basic", version="15.1.2507.6")
    with no_connections(), pytest.raises(MailboxError) as error:
        ews.verify(server, "geheim")
    assert error.value.code == "unreachable" and isinstance(error.value.__context__, EgressRefused)


@pytest.mark.parametrize("host", FORBIDDEN)
def test_it_refuses_forbidden_targets_over_http_before_connecting(host):
    with no_connections(), pytest.raises(EgressRefused):
        guarded_get(f"http://{_url_host(host)}:8080/latest/meta-data/", timeout=1)


@pytest.mark.parametrize("address", ["::ffff:0:7f00:1", "::7f00:1", "192.88.99.1", "fec0::1", "64:ff9b:1::1"])
def test_it_refuses_forms_that_is_global_lets_pass(address):
    assert not is_allowed(address)


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "gopher://127.0.0.1:25/", "ftp://example.com/", "http://user:pw@example.com/",
    "http://example.com:99999/", "http:///nohost", "//example.com/x",
])
def test_it_refuses_urls_that_are_not_plain_http(url):
    with no_connections(), pytest.raises(EgressRefused):
        guarded_get(url, timeout=1)


# --- HTTP: pinning, TLS on the name, redirects ----------------------------------------------------------------


def test_it_fetches_from_an_allow_listed_server_with_the_right_host_header(settings, web):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web({"/ok": (200, {}, "hallo")})
    response = guarded_get(server.url("/ok"), timeout=5)
    assert response.status_code == 200 and response.text == "hallo"
    assert server.requests[0][2]["Host"] == f"127.0.0.1:{server.port}"


def test_it_connects_to_the_checked_address_and_verifies_tls_against_the_name(settings, web, hosts):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web({"/ok": (200, {}, "sicher")}, tls_names=["autoconfig.firma.test"])
    # A rebinding resolver: the first answer passes the guard, later ones point inside.
    answers = iter(["127.0.0.1"])
    hosts["autoconfig.firma.test"] = lambda: next(answers, "10.0.0.1")
    response = guarded_get(server.url("/ok", host="autoconfig.firma.test"), timeout=5, ca_pem=server.cert_pem)
    assert response.text == "sicher"
    assert hosts.lookups.count("autoconfig.firma.test") == 1  # resolved once, then pinned
    assert server.sni == ["autoconfig.firma.test"]
    assert server.requests[0][2]["Host"] == f"autoconfig.firma.test:{server.port}"


def test_it_refuses_a_certificate_for_another_name(settings, web, hosts):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web({"/ok": (200, {}, "x")}, tls_names=["other.firma.test"])
    hosts["mail.firma.test"] = "127.0.0.1"
    with pytest.raises(TlsFailed) as error:
        guarded_get(server.url("/ok", host="mail.firma.test"), timeout=5, ca_pem=server.cert_pem)
    assert error.value.code == "tls_failed" and server.requests == []


def test_it_never_trusts_an_unknown_ca(settings, web, hosts):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web({"/ok": (200, {}, "x")}, tls_names=["mail.firma.test"])
    hosts["mail.firma.test"] = "127.0.0.1"
    with pytest.raises(TlsFailed):
        guarded_get(server.url("/ok", host="mail.firma.test"), timeout=5)


@pytest.mark.parametrize("target", [
    "http://127.0.0.2:{port}/", "http://0x7f000002:{port}/", "http://10.0.0.1/", "http://[::1]:{port}/",
    "http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/", "https://100.100.100.200/",
    "http://[64:ff9b::a9fe:a9fe]/", "gopher://127.0.0.1:{port}/",
])
def test_it_refuses_a_redirect_to_a_forbidden_address(settings, web, target):
    # Only the test server's own address is allowed; 127.0.0.2 is loopback too but not allow-listed.
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web()
    server.routes["/hop"] = (302, {"Location": target.format(port=server.port)}, "")
    with record_connections() as connections, pytest.raises(EgressRefused):
        guarded_get(server.url("/hop"), timeout=5)
    assert connections == [("127.0.0.1", server.port)]
    assert [request[1] for request in server.requests] == ["/hop"]


def test_it_follows_allowed_redirects_and_switches_to_get_after_303(settings, web):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web({"/end": (200, {}, "angekommen")})
    server.routes["/a"] = (307, {"Location": "/b"}, "")
    server.routes["/b"] = (303, {"Location": server.url("/end")}, "")
    response = egress.guarded_request("POST", server.url("/a"), timeout=5, data=b"<x/>")
    assert response.text == "angekommen"
    requests = [(method, path) for method, path, _headers, _body in server.requests]
    assert requests == [("POST", "/a"), ("POST", "/b"), ("GET", "/end")]


def test_it_stops_after_too_many_redirects(settings, web):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web({"/loop": (302, {"Location": "/loop"}, "")})
    with pytest.raises(egress.ProtocolFailed):
        guarded_get(server.url("/loop"), timeout=5, max_redirects=3)
    assert len(server.requests) == 4


def test_it_refuses_a_body_larger_than_allowed(settings, web):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web({"/big": (200, {}, b"x" * 5000)})
    with pytest.raises(egress.ProtocolFailed):
        guarded_get(server.url("/big"), timeout=5, max_bytes=1000)


def test_it_ignores_proxies_and_verify_off_from_the_environment(settings, web, monkeypatch):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://10.9.9.9:3128")
    server = web({"/ok": (200, {}, "direkt")})
    assert guarded_get(server.url("/ok"), timeout=5).text == "direkt"


# --- refused, closed and silent look the same -------------------------------------------------------------------


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections (the kernel does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def closed_port():
    return free_port()


@pytest.mark.parametrize("case", ["refused", "closed", "silent"])
def test_it_reports_refused_closed_and_silent_targets_alike(case, settings, closed_port, silent_port):
    settings.MAIL_CONNECT_TIMEOUT = 1
    host, port = {"refused": ("10.0.0.1", 993), "closed": ("127.0.0.1", closed_port),
                  "silent": ("127.0.0.1", silent_port)}[case]
    if case != "refused":
        settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    with record_connections() as connections:
        with pytest.raises(MailboxError) as imap_error:
            open_mailbox(ImapSettings(host, port, "ssl", "anna"), "geheim")
        with pytest.raises(MailboxError) as ews_error:
            ews.verify(ews.EwsSettings(url=f"https://{host}:{port}/EWS/Exchange.asmx", username="anna",
                                       address="anna@example.com", auth_type="basic", version="15.1.2507.6"), "geheim")
        with pytest.raises(egress.EgressError) as http_error:
            guarded_get(f"http://{host}:{port}/", timeout=1)
    assert len(connections) == (0 if case == "refused" else 3)
    assert imap_error.value.code == ews_error.value.code == http_error.value.code == "unreachable"
