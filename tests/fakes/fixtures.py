"""Fixtures for the fakes; test modules import the ones they use by name."""

import socket
from contextlib import contextmanager
from unittest import mock

import pytest

from tests.fakes.dns import FakeDNS
from tests.fakes.ews import FakeEWS
from tests.fakes.web import FakeWeb

EWS_USER, EWS_PASSWORD = "CORP\\anna", "Sommer-2025!"


@pytest.fixture
def fake_dns(settings):
    server = FakeDNS().start()
    settings.DNS_NAMESERVERS = [server.nameserver]
    settings.DNS_TIMEOUT = 1
    yield server
    server.stop()


def fast_ews_retries(settings):
    """EWS back-offs in hundredths of seconds (the product's waits are seconds), bounded as in production."""
    settings.EWS_RETRY_WAIT, settings.EWS_RETRY_MAX_WAIT, settings.EWS_RETRY_BUDGET = 0.01, 1, 5


@pytest.fixture
def fake_ews(settings):
    """The fake Exchange, reachable through the guard only because 127.0.0.1/32 is allow-listed."""
    server = FakeEWS(username=EWS_USER, password=EWS_PASSWORD).start()
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    fast_ews_retries(settings)
    yield server
    server.stop()


@pytest.fixture
def fake_ews_ntlm(settings, monkeypatch, tmp_path):
    """The fake Exchange asking for NTLM (Negotiate, NTLM) and checking a real NTLMv2 handshake."""
    server = FakeEWS(username=EWS_USER, password=EWS_PASSWORD, auth="ntlm")
    monkeypatch.setenv("NTLM_USER_FILE", str(server.ntlm_user_file(tmp_path)))
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    fast_ews_retries(settings)
    yield server.start()
    server.stop()


@pytest.fixture
def web():
    servers = []

    def start(routes=None, **kwargs) -> FakeWeb:
        servers.append(FakeWeb(routes, **kwargs).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def hosts(monkeypatch):
    """Names the tests make up, resolved to chosen addresses: hosts["mail.corp.test"] = "127.0.0.1".

    Other names go to the real resolver. Every lookup is recorded in hosts.lookups.
    """
    real = socket.getaddrinfo
    table = _Hosts()

    def getaddrinfo(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        table.lookups.append(name)
        if name in table:
            answer = table[name]
            addresses = answer() if callable(answer) else answer
            addresses = [addresses] if isinstance(addresses, str) else addresses
            return [info for address in addresses for info in real(address, port, *args, **kwargs)]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


class _Hosts(dict):
    def __init__(self):
        super().__init__()
        self.lookups = []


@contextmanager
def no_connections():
    """Fail loudly if anything opens a TCP connection inside the block."""
    attempts = []

    def refuse(sock, address, *args):
        attempts.append(address)
        raise AssertionError(f"a connection to {address} was attempted")

    with mock.patch.object(socket.socket, "connect", refuse), mock.patch.object(socket.socket, "connect_ex", refuse):
        yield attempts
    assert attempts == []


@contextmanager
def record_connections(allowed=("127.0.0.1",)):
    """Record every TCP connect() inside the block as (host, port).

    Only connections to `allowed` addresses really happen; anything else is
    refused locally, so even a broken guard never sends a packet elsewhere.
    """
    attempts = []
    real = socket.socket.connect

    def connect(sock, address, *args):
        attempts.append(tuple(address[:2]))
        if address[0] not in allowed:
            raise ConnectionRefusedError(f"test refused a connection to {address[0]}")
        return real(sock, address, *args)

    with mock.patch.object(socket.socket, "connect", connect):
        yield attempts
