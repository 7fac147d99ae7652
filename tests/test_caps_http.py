"""Byte and time caps on every HTTP client that reads from a host a user or a provider controls.

A compression bomb (~200 KB that inflate to 200 MB) against the guarded path
(autoconfig, ISPDB, Autodiscover), Microsoft Graph, the sign-in service
(discovery and token, through MSAL) and the tenant lookup: each stops at its
cap on inflated bytes with a clear code, and the process's peak of Python
memory (tracemalloc) stays far below what inflating the answer would take.
An answer that trickles one byte at a time is cut at the time cap although
every single wait for a byte is short.
"""

import tracemalloc

import pytest

from migration import detection
from migration.microsoft import client as ms_client
from sync import egress
from sync.microsoft import client as sync_ms_client
from sync.microsoft.client import MicrosoftError
from sync.microsoft.graph import Graph
from tests.fakes import bombs
from tests.fakes.fixtures import web  # noqa: F401
from tests.fakes.microsoft_fixtures import CONTOSO, fake_microsoft_server, microsoft  # noqa: F401
from tests.fakes.web import bomb_route, drip_route

# What a capped read may cost: the cap, a copy of it, the decoder's window and some bookkeeping.
PEAK_BOUND = 2 * 1024 * 1024  # runs measure ~0.8 MB (512 KB cap) and ~0.5 MB (256 KB cap)


@pytest.fixture(autouse=True, scope="module")
def _bombs_built():
    bombs.bomb()  # built before any measurement
    for encoding in ("gzip", "deflate"):
        bombs.bomb(encoding=encoding)


def peak_of(call):
    """(the exception `call` raised or None, its peak of traced Python memory in bytes)."""
    tracemalloc.start()
    try:
        call()
        raised = None
    except Exception as error:  # noqa: BLE001 - the test asserts what it was
        raised = error
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


# --- the guarded path: autoconfig, ISPDB, Autodiscover ---------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_bomb_on_the_guarded_path_stops_at_512_kb_inflated(settings, web, encoding):  # noqa: F811
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web({"/mail/config-v1.1.xml": bomb_route(encoding)})
    raised, peak = peak_of(lambda: egress.guarded_get(server.url("/mail/config-v1.1.xml"), timeout=5))
    assert isinstance(raised, egress.TooLarge) and raised.code == "too_large"
    assert peak < PEAK_BOUND


def test_detection_treats_a_bomb_as_a_source_that_did_not_answer(settings, web):  # noqa: F811
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web({"/autodiscover/autodiscover.xml": bomb_route()})
    found = []
    raised, peak = peak_of(lambda: found.append(detection._autoconfig(server.url("/autodiscover/autodiscover.xml"),
                                                                       "firma.test")))
    assert raised is None and found == [(None, False)]  # not cached as "no such server"
    assert peak < PEAK_BOUND


def test_a_trickling_answer_on_the_guarded_path_is_cut_at_the_time_cap(settings, web):  # noqa: F811
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    server = web({"/slow": drip_route()})
    # Each byte comes within the 5 s timeout; the whole answer would take 8 s.
    with pytest.raises(egress.TooSlow) as error:
        egress.guarded_get(server.url("/slow"), timeout=5, max_seconds=1)
    assert error.value.code == "too_slow"


def test_the_time_cap_is_a_setting(settings, web):  # noqa: F811
    settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
    settings.EGRESS_HTTP_MAX_SECONDS = 1
    server = web({"/slow": drip_route()})
    with pytest.raises(egress.TooSlow):
        egress.guarded_request("POST", server.url("/slow"), timeout=5, data=b"")


# --- Microsoft: Graph, the sign-in service (MSAL), the tenant lookup ------------------------------------------


@pytest.fixture
def capped(settings, microsoft):  # noqa: F811
    settings.MS_MAX_RESPONSE_BYTES = 256 * 1024
    settings.MS_MAX_RESPONSE_SECONDS = 1
    return microsoft


def test_a_compressed_bomb_from_graph_is_stopped_on_its_inflated_size(capped, db):  # db: the mailbox slots
    capped.hostile = {"answer": "bomb", "on": {"graph"}}
    graph = Graph("any-token", mailbox="anna@contoso.com")
    raised, peak = peak_of(lambda: graph.get("/v1.0/me"))
    graph.close()
    assert isinstance(raised, MicrosoftError) and raised.code == "ms_too_large" and not raised.permanent
    assert peak < PEAK_BOUND


def test_a_compressed_bomb_from_discovery_is_stopped_on_its_inflated_size(capped):
    capped.hostile = {"answer": "bomb", "on": {"discovery"}}
    raised, peak = peak_of(sync_ms_client.build_app)
    assert isinstance(raised, MicrosoftError) and raised.code == "ms_too_large"
    assert peak < PEAK_BOUND


def test_a_compressed_bomb_from_the_token_endpoint_is_stopped_on_its_inflated_size(capped):
    capped.grant_consent_in_entra(capped.contoso)
    capped.hostile = {"answer": "bomb", "on": {"token"}}
    raised, peak = peak_of(lambda: ms_client.prove_admin_consent(CONTOSO))
    assert isinstance(raised, MicrosoftError) and raised.code == "ms_too_large"
    assert peak < PEAK_BOUND
    capped.hostile = None
    assert ms_client.prove_admin_consent(CONTOSO)  # the same call works with an honest answer


def test_a_compressed_bomb_from_the_tenant_lookup_is_not_taken_for_an_answer(capped):
    capped.hostile = {"answer": "bomb", "on": {"discovery"}}
    found = []
    raised, peak = peak_of(lambda: found.append(ms_client.directory_id("contoso.com")))
    assert raised is None and found == [""]
    assert peak < PEAK_BOUND
    capped.hostile = None
    assert ms_client.directory_id("contoso.com") == CONTOSO  # "" was not cached


def test_a_trickling_answer_from_graph_is_cut_at_the_time_cap(capped, db):  # db: the mailbox slots
    capped.hostile = {"answer": "drip", "on": {"graph"}}
    graph = Graph("any-token", mailbox="anna@contoso.com")
    with pytest.raises(MicrosoftError) as error:
        graph.get("/v1.0/me")
    graph.close()
    assert error.value.code == "ms_too_slow" and not error.value.permanent


def test_a_trickling_answer_from_the_token_endpoint_is_cut_at_the_time_cap(capped):
    capped.grant_consent_in_entra(capped.contoso)
    capped.hostile = {"answer": "drip", "on": {"token"}}
    with pytest.raises(MicrosoftError) as error:
        ms_client.prove_admin_consent(CONTOSO)
    assert error.value.code == "ms_too_slow"


# --- Google: token endpoint and Gmail API ---------------------------------------------------------------------


def test_a_compressed_bomb_from_google_is_stopped_and_a_trickle_is_cut(settings, web):  # noqa: F811
    from sync.google import oauth
    from sync.google.oauth import GoogleError

    settings.GOOGLE_CLIENT_ID, settings.GOOGLE_CLIENT_SECRET, settings.GOOGLE_TIMEOUT = "id", "secret", 1
    server = web({"/token": bomb_route(), "/gmail/v1/users/me/settings/sendAs": drip_route()})
    settings.GOOGLE_TOKEN_URL, settings.GOOGLE_GMAIL_URL = server.url("/token"), server.url("")
    raised, peak = peak_of(lambda: oauth.token_request({"grant_type": "refresh_token", "refresh_token": "x"}))
    assert isinstance(raised, GoogleError) and raised.code == "google_protocol" and not raised.permanent
    assert peak < PEAK_BOUND
    with pytest.raises(GoogleError) as slow:
        oauth.send_as_addresses("token")
    assert slow.value.code == "google_unreachable"  # cut after 4 × GOOGLE_TIMEOUT, not after the whole drip
