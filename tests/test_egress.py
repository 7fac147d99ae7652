"""The egress guard refuses non-public destinations unless allow-listed."""

import pytest

from sync.egress import EgressRefused, is_allowed, resolve_checked

FORBIDDEN = [
    "127.0.0.1", "127.1.2.3", "0.0.0.0", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "100.127.255.254", "224.0.0.1", "255.255.255.255", "198.18.0.1", "192.0.0.8",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "2002:c0a8:101::1",
]
ALLOWED = ["8.8.8.8", "193.99.144.80", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_it_refuses_non_public_addresses(address, settings):
    settings.EGRESS_ALLOW_NETWORKS = []
    assert not is_allowed(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_it_allows_public_addresses(address, settings):
    settings.EGRESS_ALLOW_NETWORKS = []
    assert is_allowed(address)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0x7f000001", "2130706433", "[::1]", "::1", "0177.0.0.1"])
def test_it_refuses_loopback_in_any_spelling(host, settings):
    settings.EGRESS_ALLOW_NETWORKS = []
    with pytest.raises(EgressRefused):
        resolve_checked(host.strip("[]"), 993)


def test_it_refuses_names_that_do_not_resolve(settings):
    with pytest.raises(EgressRefused):
        resolve_checked("no-such-host.invalid", 993)


def test_it_allows_what_the_allow_list_opens(settings):
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    assert resolve_checked("127.0.0.1", 993) == "127.0.0.1"
    assert not is_allowed("10.0.0.1")


def test_special_use_names_are_answered_without_a_nameserver(settings, monkeypatch):
    """RFC 6761: *.invalid does not exist, *.localhost is loopback; neither is sent to DNS (these machines
    must not send traffic to any address but 127.0.0.1)."""
    import socket

    from sync import egress

    asked = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        if host == "localhost":  # as the hosts file answers; not every machine lists ::1 as well
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for spelling in ("no-such-host.INVALID.", "x\u3002invalid", "x.invalid\u3002", "\uff58.\uff49nvalid"):
        with pytest.raises(EgressRefused) as refused:
            resolve_checked(spelling, 993)
        assert refused.value.reason == "unknown_name", spelling
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    for spelling in ("imap.demo.localhost", "localhost.", "LOCALHOST", "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54"):
        assert resolve_checked(spelling, 993) == "127.0.0.1", spelling
    assert egress.destination_keys("imap.demo.localhost", 993) == ["127.0.0.1"]
    assert set(asked) == {"127.0.0.1", "localhost"}  # never another spelling, never a .localhost or .invalid name
