"""Exchange on-premises through exchangelib against the fake EWS endpoint (HTTPS on 127.0.0.1)."""

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest
from exchangelib.protocol import CachingProtocol

from sync import crypto
from sync.exchange import client as ews
from sync.egress import EgressRefused
from sync.exchange import engine as v3_ews
from sync.imap.client import MailboxError
from sync.models import FolderState, SyncedMessage
from sync.services import replace_password
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews, fake_ews_ntlm, hosts, no_connections  # noqa: F401

NOW = datetime.now(timezone.utc)


@pytest.fixture
def server(fake_ews):
    return ews.EwsSettings(url=fake_ews.url, username=EWS_USER, address="anna@firma.test", auth_type="basic",
                           ca_pem=fake_ews.cert_pem, version="15.1.2507.6")


def test_it_verifies_and_returns_a_sync_state_per_folder(fake_ews, server):
    fake_ews.page_size = 2
    for day in range(5):
        fake_ews.deliver("inbox", subject=f"alt {day}", received=NOW - timedelta(days=day))
    cursors = ews.verify(server, EWS_PASSWORD)
    assert set(cursors) == {"INBOX", "Sent"}
    assert cursors["INBOX"]["ews_folder"] == "inbox" and cursors["INBOX"]["ews_sync_state"]
    # Five items in pages of two: three SyncFolderItems calls (IncludesLastItemInRange on the last).
    assert fake_ews.calls.count("SyncFolderItems") == 3 + 1
    assert "GetItem" not in fake_ews.calls  # ids only: verifying fetches no mail


def test_it_asks_the_server_for_its_version_when_none_is_given(fake_ews, server):
    cursors = ews.verify(dataclasses.replace(server, version=""), EWS_PASSWORD)
    assert set(cursors) == {"INBOX", "Sent"} and fake_ews.calls[0] == "ConvertId"


def test_it_reports_a_wrong_password_as_auth_failed(fake_ews, server):
    with pytest.raises(MailboxError) as error:
        ews.verify(server, "falsch")
    assert (error.value.code, error.value.permanent) == ("auth_failed", True)
    assert fake_ews.calls == ["401", "401"]  # the request, and the fresh sign-in that confirms the refusal


def test_it_never_leaves_credentials_in_exchangelibs_process_wide_cache(fake_ews, server):
    ews.verify(server, EWS_PASSWORD)
    assert not any(EWS_PASSWORD in repr(key) or key[0] == fake_ews.url for key in CachingProtocol._protocol_cache)


def test_it_refuses_a_server_whose_ca_it_does_not_know(fake_ews, server):
    with pytest.raises(MailboxError) as error:
        ews.verify(dataclasses.replace(server, ca_pem=""), EWS_PASSWORD)
    assert error.value.code == "tls_failed" and fake_ews.calls == []


def test_it_trusts_the_deployments_ca_file(fake_ews, server, settings, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(fake_ews.cert_pem)
    settings.MAIL_TLS_CA_FILE = str(ca_file)
    assert ews.verify(dataclasses.replace(server, ca_pem=""), EWS_PASSWORD)


def test_it_checks_the_certificate_against_the_name_not_the_address(fake_ews, server, hosts):
    hosts["exchange.firma.test"] = "127.0.0.1"  # the fake's certificate is for localhost only
    with pytest.raises(MailboxError) as error:
        ews.verify(dataclasses.replace(server, url=fake_ews.url.replace("localhost", "exchange.firma.test")),
                   EWS_PASSWORD)
    assert error.value.code == "tls_failed" and fake_ews.calls == []


def test_it_resolves_the_host_once_and_stays_on_that_address(fake_ews, server, hosts):
    answers = iter(["127.0.0.1"])
    hosts["localhost"] = lambda: next(answers, "10.0.0.1")  # later answers would point inside
    ews.verify(server, EWS_PASSWORD)
    assert hosts.lookups.count("localhost") == 1 and "SyncFolderItems" in fake_ews.calls


def test_it_refuses_an_ews_host_outside_the_allow_list(fake_ews, server, settings):
    settings.EGRESS_ALLOW_NETWORKS = []
    with no_connections(), pytest.raises(MailboxError) as error:
        ews.verify(server, EWS_PASSWORD)
    assert error.value.code == "unreachable" and isinstance(error.value.__context__, EgressRefused)


@pytest.mark.parametrize("typed, url", [
    ("mail.firma.test", "https://mail.firma.test/EWS/Exchange.asmx"),
    ("mail.firma.test:8443", "https://mail.firma.test:8443/EWS/Exchange.asmx"),
    ("https://mail.firma.test", "https://mail.firma.test/EWS/Exchange.asmx"),
    ("https://mail.firma.test/EWS/Exchange.asmx", "https://mail.firma.test/EWS/Exchange.asmx"),
])
def test_it_turns_what_users_type_into_an_ews_url(typed, url):
    assert ews.ews_url_for(typed) == url


@pytest.mark.parametrize("typed", ["http://mail.firma.test/EWS/Exchange.asmx", "ftp://mail.firma.test"])
def test_it_never_sends_ews_credentials_without_tls(typed):
    with pytest.raises((ValueError, EgressRefused)):
        ews.ews_url_for(typed)


# --- the V3 EWS engine ------------------------------------------------------------------------------------------


@pytest.fixture
def ews_account(db, make_account, user, fake_ews, server, settings):
    """An Exchange account right after the handoff: cursors from verify, V2's high-water mark 1 h ago."""
    account = make_account(user, "anna@firma.test", provider_kind="exchange", engine="v3")
    ews.apply_to_account(account, server=server, password=EWS_PASSWORD)
    account.save()
    for name, cursor in ews.verify(server, EWS_PASSWORD).items():
        FolderState.objects.create(account=account, name=name, ews_sync_state=cursor["ews_sync_state"])
    fake_ews.calls.clear()
    return account


def _subjects(account):
    return sorted(SyncedMessage.objects.filter(account=account).values_list("subject", flat=True))


def test_it_keeps_the_password_encrypted_and_reads_settings_back(ews_account, server):
    assert EWS_PASSWORD not in ews_account.secret_encrypted
    assert crypto.decrypt_json(ews_account.secret_encrypted) == {"password": EWS_PASSWORD}
    assert ews.settings_of(ews_account) == dataclasses.replace(server, version="")


def test_it_syncs_new_mail_incrementally_with_paging(ews_account, fake_ews, settings):
    fake_ews.page_size = 2  # the client asks for up to 512 per page
    for number in range(5):
        fake_ews.deliver("inbox", subject=f"neu {number}")
    fake_ews.deliver("sentitems", subject="gesendet")
    assert v3_ews.sync(ews_account) == 6
    assert v3_ews.sync(ews_account) == 0
    fake_ews.deliver("inbox", subject="noch eine")
    assert v3_ews.sync(ews_account) == 1
    assert len(_subjects(ews_account)) == 7
    ews_account.refresh_from_db()
    assert ews_account.last_sync_error == "" and ews_account.last_sync_at is not None
    assert SyncedMessage.objects.get(account=ews_account, subject="gesendet").folder == "Sent"


def test_it_reads_the_whole_folder_on_the_first_run_once(ews_account, fake_ews):
    # Both arrived before the cursor was taken; V2 missed them (the first one moved in with an old date).
    fake_ews.deliver("inbox", subject="uralt", received=datetime(2020, 1, 1, tzinfo=timezone.utc))
    fake_ews.deliver("inbox", subject="V2 verpasst", received=NOW - timedelta(minutes=30), message_id="<verpasst@x>")
    FolderState.objects.filter(account=ews_account, name="INBOX").update(
        ews_sync_state=fake_ews._state(fake_ews.folders["inbox"][-1]["seq"]))
    assert v3_ews.sync(ews_account) == 2  # no date window: whatever is in the folder and not in the CRM
    assert _subjects(ews_account) == ["V2 verpasst", "uralt"]
    assert v3_ews.sync(ews_account) == 0  # later runs continue from the state


def test_it_does_not_import_what_v2_already_had(ews_account, fake_ews):
    SyncedMessage.objects.create(account=ews_account, dedup_key="schon-da@example.org", folder="INBOX",
                                 subject="von V2", imported_by="v2")
    fake_ews.deliver("inbox", subject="von EWS", message_id="<schon-da@example.org>")
    assert v3_ews.sync(ews_account) == 0
    assert list(SyncedMessage.objects.filter(account=ews_account).values_list("imported_by", flat=True)) == ["v2"]


def test_it_recovers_from_an_invalid_sync_state_without_duplicates(ews_account, fake_ews):
    fake_ews.deliver("inbox", subject="vorher")
    v3_ews.sync(ews_account)
    old_state = FolderState.objects.get(account=ews_account, name="INBOX").ews_sync_state
    fake_ews.invalidate_sync_states()  # e.g. the mailbox database was restored
    fake_ews.deliver("inbox", subject="während", received=NOW - timedelta(minutes=5))
    fake_ews.deliver("inbox", subject="alt", received=NOW - timedelta(days=30))
    assert v3_ews.sync(ews_account) == 2  # a fresh walk of the whole folder; "vorher" is known
    assert _subjects(ews_account) == ["alt", "vorher", "während"]
    state = FolderState.objects.get(account=ews_account, name="INBOX")
    assert state.ews_sync_state and state.ews_sync_state != old_state
    fake_ews.deliver("inbox", subject="danach")
    assert v3_ews.sync(ews_account) == 1
    assert _subjects(ews_account) == ["alt", "danach", "vorher", "während"]
    ews_account.refresh_from_db()
    assert ews_account.last_sync_error == ""


def test_it_records_a_wrong_password_during_sync_and_keeps_the_cursor(ews_account, fake_ews):
    fake_ews.password = "neues-passwort"
    state_before = FolderState.objects.get(account=ews_account, name="INBOX").ews_sync_state
    fake_ews.deliver("inbox", subject="wartet")
    assert v3_ews.sync(ews_account) == 0
    ews_account.refresh_from_db()
    # One refused login, then the sync waits for the user (no lockout by retrying).
    assert (ews_account.status, ews_account.last_sync_error) == ("reconnect", "ews_auth_failed")
    assert FolderState.objects.get(account=ews_account, name="INBOX").ews_sync_state == state_before
    replace_password(account_id=ews_account.pk, password="neues-passwort")  # the user enters the new one
    ews_account.refresh_from_db()
    assert v3_ews.sync(ews_account) == 1  # nothing was lost


def test_it_dedupes_messages_without_message_id_within_ews(ews_account, fake_ews):
    fake_ews.deliver("inbox", subject="ohne ID", message_id="", received=NOW - timedelta(minutes=1))
    v3_ews.sync(ews_account)
    fake_ews.invalidate_sync_states()
    v3_ews.sync(ews_account)  # the window re-reads it
    keys = list(SyncedMessage.objects.filter(account=ews_account).values_list("dedup_key", flat=True))
    assert len(keys) == 1 and keys[0].startswith("sha256:")


# --- NTLM: a real NTLMv2 handshake (requests_ntlm in exchangelib <-> pyspnego in the fake) ------------------------


@pytest.fixture
def ntlm_server(fake_ews_ntlm):
    return ews.EwsSettings(url=fake_ews_ntlm.url, username=EWS_USER, address="anna@firma.test", auth_type="ntlm",
                           ca_pem=fake_ews_ntlm.cert_pem, version="15.1.2507.6")


def test_it_signs_in_with_ntlm_through_the_pinned_connection(fake_ews_ntlm, ntlm_server):
    fake_ews_ntlm.deliver("inbox", subject="per NTLM")
    cursors = ews.verify(ntlm_server, EWS_PASSWORD)
    assert set(cursors) == {"INBOX", "Sent"}
    # Negotiate -> challenge -> authenticate, once: the connection stays signed in.
    assert fake_ews_ntlm.calls[:3] == ["401", "ntlm-challenge", "ntlm-ok"]
    assert fake_ews_ntlm.calls.count("ntlm-ok") == 1


def test_it_reports_a_wrong_ntlm_password_as_auth_failed(fake_ews_ntlm, ntlm_server):
    with pytest.raises(MailboxError) as error:
        ews.verify(ntlm_server, "falsch")
    assert error.value.code == "auth_failed"
    assert "ntlm-ok" not in fake_ews_ntlm.calls and "ntlm-challenge" in fake_ews_ntlm.calls


def test_it_never_sends_credentials_over_plain_http(fake_ews, server):
    with no_connections(), pytest.raises(MailboxError) as error:
        ews.verify(dataclasses.replace(server, url=server.url.replace("https://", "http://")), EWS_PASSWORD)
    assert error.value.code == "tls_failed"


def test_verifying_a_big_mailbox_reports_progress_once_per_page(fake_ews, server):
    for n in range(1100):
        fake_ews.deliver("inbox", subject=f"alt {n}", received=NOW - timedelta(minutes=n))
    beats = []
    cursors = ews.verify(server, EWS_PASSWORD, heartbeat=lambda: beats.append(1))
    assert cursors["INBOX"]["ews_sync_state"] and len(beats) == 2  # after 512 and 1024 items
    assert fake_ews.calls.count("SyncFolderItems") == 3 + 1  # 3 inbox pages, 1 sent
