"""Exchange as it behaves under load (issue 9, item 5): ErrorServerBusy with BackOffMilliseconds, 401 while
throttling, error answers without a SyncState, a login that may not open the mailbox; against the fake EWS
endpoint over HTTPS."""

from datetime import datetime, timedelta, timezone

import pytest
from exchangelib.protocol import FaultTolerance

from sync.exchange import client as ews
from sync.exchange import engine as v3_ews
from sync.imap.client import MailboxError
from sync.models import AccountStatus, FolderState, SyncedMessage
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews, hosts, no_connections  # noqa: F401

NOW = datetime.now(timezone.utc)


@pytest.fixture
def server(fake_ews):
    return ews.EwsSettings(url=fake_ews.url, username=EWS_USER, address="anna@firma.test", auth_type="basic",
                           ca_pem=fake_ews.cert_pem, version="15.1.2507.6")


@pytest.fixture
def ews_account(db, make_account, user, fake_ews, server):
    account = make_account(user, "anna@firma.test", provider_kind="exchange", engine="v3")
    ews.apply_to_account(account, server=server, password=EWS_PASSWORD)
    account.save()
    return account


@pytest.mark.parametrize("form", ["fault", "response"])
def test_it_finishes_a_5000_item_verify_while_exchange_answers_server_busy(fake_ews, server, form):
    for number in range(5000):
        fake_ews.deliver("inbox", subject=f"alt {number}", received=NOW - timedelta(minutes=number))
    fake_ews.busy_every, fake_ews.busy_form, fake_ews.busy_back_off_ms = 3, form, 20
    beats = []
    cursors = ews.verify(server, EWS_PASSWORD, heartbeat=lambda: beats.append(1))
    assert set(cursors) == {"INBOX", "Sent"} and cursors["INBOX"]["ews_sync_state"]
    assert fake_ews.calls.count("busy") >= 4 and len(beats) >= 5000 // ews.SYNC_PAGE


def test_it_waits_the_back_off_exchange_asks_for(fake_ews, server, monkeypatch):
    # The back-off handed to exchangelib's policy (which sleeps until then): not the sleeps themselves, whose
    # length depends on how busy the machine is between the answer and the next request.
    waits = []
    monkeypatch.setattr(FaultTolerance, "back_off", lambda policy, seconds: waits.append(seconds))
    fake_ews.busy_every, fake_ews.busy_form, fake_ews.busy_back_off_ms = 2, "response", 700
    ews.verify(server, EWS_PASSWORD)
    assert waits and all(wait == 0.7 for wait in waits)
    # A back-off beyond EWS_RETRY_MAX_WAIT (1 s here) is not waited for: a transient error, not a refused password.
    waits.clear()
    fake_ews.busy_back_off_ms = 5000
    with pytest.raises(MailboxError) as error:
        ews.verify(server, EWS_PASSWORD)
    assert (error.value.code, error.value.permanent) == ("protocol", False) and not waits


def test_it_gives_up_when_exchange_stays_busy_beyond_the_budget(fake_ews, server, settings):
    settings.EWS_RETRY_BUDGET = 0.2
    fake_ews.busy_every, fake_ews.busy_back_off_ms = 1, 50
    with pytest.raises(MailboxError) as error:
        ews.verify(server, EWS_PASSWORD)
    assert (error.value.code, error.value.permanent) == ("protocol", False)
    assert 2 <= fake_ews.calls.count("busy") <= 6  # tried again for as long as the budget allows, then no more


def test_it_keeps_syncing_through_a_server_busy_during_the_sync(ews_account, fake_ews):
    for number in range(30):
        fake_ews.deliver("inbox", subject=f"neu {number}")
    fake_ews.page_size = 5
    fake_ews.busy_every, fake_ews.busy_form = 4, "response"
    assert v3_ews.sync(ews_account) == 30
    ews_account.refresh_from_db()
    assert ews_account.status == AccountStatus.ACTIVE and not ews_account.last_sync_error


def test_it_does_not_stop_the_sync_on_a_401_under_throttling(ews_account, fake_ews):
    for number in range(12):
        fake_ews.deliver("inbox", subject=f"neu {number}")
    fake_ews.page_size = 3
    fake_ews.unauthorized_every = 4  # the right password, refused now and then
    assert v3_ews.sync(ews_account) == 12
    ews_account.refresh_from_db()
    assert fake_ews.calls.count("401-throttled") >= 2
    assert ews_account.status != AccountStatus.RECONNECT and ews_account.status == AccountStatus.ACTIVE


def test_it_stops_the_sync_when_a_fresh_sign_in_confirms_the_refusal(ews_account, fake_ews):
    fake_ews.password = "geändert"  # the user changed the Windows password
    v3_ews.sync(ews_account)
    ews_account.refresh_from_db()
    assert (ews_account.status, ews_account.last_sync_error) == (AccountStatus.RECONNECT, "ews_auth_failed")
    assert fake_ews.calls.count("401") == 2  # no more tries: they would lock the Windows account


def test_it_rebuilds_a_folder_state_when_the_error_answer_has_no_sync_state(ews_account, fake_ews):
    fake_ews.deliver("inbox", subject="vorher")
    v3_ews.sync(ews_account)
    fake_ews.invalid_state_answer = "bare"
    fake_ews.invalidate_sync_states()
    fake_ews.deliver("inbox", subject="nachher")
    assert v3_ews.sync(ews_account) == 1
    ews_account.refresh_from_db()
    assert ews_account.status == AccountStatus.ACTIVE and not ews_account.last_sync_error
    assert SyncedMessage.objects.filter(account=ews_account, subject="nachher").exists()
    assert FolderState.objects.get(account=ews_account, name="INBOX").ews_sync_state


@pytest.mark.parametrize("refusal", ["ErrorAccessDenied", "ErrorNonExistentMailbox"])
def test_it_reports_a_login_that_may_not_open_the_mailbox_not_as_a_wrong_password(fake_ews, server, refusal):
    from django.utils import translation

    from migration.errors import message_for
    from sync.services import PASSWORD_REFUSED

    fake_ews.mailbox_refusal = refusal
    with pytest.raises(MailboxError) as error:
        ews.verify(server, EWS_PASSWORD)
    assert (error.value.code, error.value.permanent) == ("ews_mailbox_denied", True)
    assert ews.error_code(error.value.code) not in PASSWORD_REFUSED
    with translation.override("de"):
        assert "darf das Postfach nicht öffnen" in str(message_for(ews.error_code(error.value.code)))
    with translation.override("en"):
        assert "may not open the mailbox" in str(message_for(ews.error_code(error.value.code)))


def test_it_does_not_ask_for_a_new_password_when_the_login_may_not_open_the_mailbox(ews_account, fake_ews):
    fake_ews.mailbox_refusal = "ErrorAccessDenied"
    v3_ews.sync(ews_account)
    ews_account.refresh_from_db()
    assert (ews_account.status, ews_account.last_sync_error) == (AccountStatus.ERROR, "ews_mailbox_denied")


def test_it_loses_no_message_when_one_answer_of_a_getitem_is_server_busy(ews_account, fake_ews):
    for number in range(3):
        item = fake_ews.deliver("inbox", subject=f"neu {number}")
        if number == 1:
            item["get_error_once"] = "ErrorServerBusy"
    assert v3_ews.sync(ews_account) == 3
    assert set(SyncedMessage.objects.filter(account=ews_account).values_list("subject", flat=True)) == {
        "neu 0", "neu 1", "neu 2"}


def test_it_shows_a_verify_waiting_out_back_offs_as_alive(fake_ews, server):
    """The stuck-migration sweeper must not start a second verify while the first waits for Exchange."""
    fake_ews.busy_every = 2
    beats = []
    ews.verify(server, EWS_PASSWORD, heartbeat=lambda: beats.append(1))
    assert fake_ews.calls.count("busy") >= 3 and len(beats) >= fake_ews.calls.count("busy")
