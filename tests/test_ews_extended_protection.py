"""NTLM with channel binding (Extended Protection, on by default since Exchange Server 2019 CU14; issue 9):
the product's EWS client through the pinned connection against a fake Exchange that requires it, and proof
that the fake really refuses a sign-in without the binding."""

import pytest
import requests
from requests_ntlm import HttpNtlmAuth

from sync import egress
from sync.errors import MailboxError
from sync.exchange import client as ews
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews_ntlm  # noqa: F401

SOAP = (
    '<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
    'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body><m:GetFolder>'
    "<m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>"
    '<t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>'
).encode()


@pytest.fixture
def protected(fake_ews_ntlm):
    fake_ews_ntlm.extended_protection = True
    return fake_ews_ntlm


@pytest.fixture
def server(protected):
    return ews.EwsSettings(url=protected.url, username=EWS_USER, address="anna@firma.test", auth_type="ntlm",
                           ca_pem=protected.cert_pem, version="15.1.2507.6")


def _post(fake, auth) -> requests.Response:
    """One EWS request with requests_ntlm over the guard's pinned connection (as exchangelib sends it)."""
    session = egress.pinned_session("localhost", "127.0.0.1", ca_pem=fake.cert_pem, max_retries=0)
    session.auth = auth
    try:
        return session.post(fake.url, data=SOAP, headers={"Content-Type": "text/xml; charset=utf-8"}, timeout=10)
    finally:
        session.close()


def test_it_signs_in_with_the_channel_binding_where_exchange_requires_it(protected, server):
    protected.deliver("inbox", subject="mit Kanalbindung")
    cursors = ews.verify(server, EWS_PASSWORD)
    assert set(cursors) == {"INBOX", "Sent"}
    assert protected.calls[:3] == ["401", "ntlm-challenge", "ntlm-ok"] and "401-bindings" not in protected.calls


def test_the_fake_refuses_ntlm_without_a_channel_binding(protected):
    answer = _post(protected, HttpNtlmAuth(EWS_USER, EWS_PASSWORD, send_cbt=False))
    assert answer.status_code == 401
    assert protected.calls == ["401", "ntlm-challenge", "401-bindings"]
    # The same client with the binding gets in: the refusal is about the binding, not the password.
    protected.calls.clear()
    assert _post(protected, HttpNtlmAuth(EWS_USER, EWS_PASSWORD)).status_code == 200
    assert protected.calls == ["401", "ntlm-challenge", "ntlm-ok", "GetFolder"]


def test_the_fake_refuses_the_binding_of_another_certificate(protected, monkeypatch):
    # What a TLS-inspecting proxy between portal and Exchange causes: the client sees the proxy's certificate.
    monkeypatch.setattr("requests_ntlm.requests_ntlm._get_certificate_hash", lambda der: b"\x01" * 32)
    assert _post(protected, HttpNtlmAuth(EWS_USER, EWS_PASSWORD)).status_code == 401
    assert protected.calls[-1] == "401-bindings"


def test_the_fake_refuses_an_all_zero_binding(protected, monkeypatch):
    # MS-NLMP lets a server that merely accepts bindings ignore zeros ("unknown"); "Require" does not.
    monkeypatch.setattr("spnego._ntlm.md5", lambda data: b"\x00" * 16)
    assert _post(protected, HttpNtlmAuth(EWS_USER, EWS_PASSWORD)).status_code == 401
    assert protected.calls[-1] == "401-bindings"


def test_a_client_that_sends_no_binding_cannot_verify(protected, server, monkeypatch):
    """The product gets in only because requests_ntlm reads the peer certificate through the pinned connection."""
    monkeypatch.setattr("requests_ntlm.requests_ntlm.HttpNtlmAuth._get_server_cert", lambda self, response: None)
    with pytest.raises(MailboxError) as error:
        ews.verify(server, EWS_PASSWORD)
    assert error.value.code == "auth_failed" and "ntlm-ok" not in protected.calls
    assert "401-bindings" in protected.calls
