"""Byte and time caps of the IMAP client (sync.imap.client): IMAP_MAX_MESSAGE_BYTES, IMAP_COMMAND_MAX_SECONDS.

A literal no real server sends ({2000000000}) comes from a tiny scripted
server (tests/fakes/imap.py); a merely big message from the real Dovecot.
The worker's peak of Python memory (tracemalloc) during the sync run stays
far below the literal's size: nothing is read or allocated for it.
"""

import tracemalloc

import pytest

from migration.imap import flow
from portal.devservers import make_message
from sync import crypto
from sync.imap import engine
from sync.imap.client import ImapSettings, MailboxError
from sync.models import SkippedMessage, SyncedMessage
from sync.runs import sync_account
from tests.fakes.imap import UIDVALIDITY, FakeIMAP
from tests.test_sync_engines import _switch_to_v3

pytestmark = pytest.mark.django_db

PEAK_BOUND = 2 * 1024 * 1024  # twice IMAP_MAX_MESSAGE_BYTES of the Dovecot test; runs measure ~0.1 MB


def peak_of(call):
    """(what `call` returned, its peak of traced Python memory in bytes)."""
    tracemalloc.start()
    try:
        result = call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


def subjects(account):
    return sorted(SyncedMessage.objects.filter(account=account).values_list("subject", flat=True))


@pytest.fixture
def fake_imap(settings):
    servers = []

    def start(hostile=None) -> FakeIMAP:
        server = FakeIMAP([make_message(subject=s) for s in ("eins", "riesig", "drei")], hostile=hostile).start()
        servers.append(server)
        settings.EGRESS_ALLOW_NETWORKS = ["127.0.0.1/32"]
        settings.MAIL_TLS_CA_FILE = str(server.cert_path)
        return server

    yield start
    for server in servers:
        server.stop()


def v3_account_on(server: FakeIMAP, make_account, user):
    return make_account(user, "anna@firma.test", engine="v3", imap_host="127.0.0.1", imap_port=server.port,
                        imap_security="ssl", username="anna",
                        secret_encrypted=crypto.encrypt_json({"password": "geheim"}))


def test_a_literal_announced_far_over_the_cap_skips_that_message_and_the_mailbox_goes_on(fake_imap, make_account,
                                                                                        user):
    server = fake_imap({"literal_in": "fetch", "uid": 2})
    account = v3_account_on(server, make_account, user)
    added, peak = peak_of(lambda: engine.sync(account))
    assert added == 2 and subjects(account) == ["drei", "eins"]
    skipped = SkippedMessage.objects.get(account=account)
    assert (skipped.folder, skipped.reference, skipped.reason) == ("INBOX", f"uid:{UIDVALIDITY}:2", "too_large")
    assert "2000000000" in skipped.detail
    account.refresh_from_db()
    assert account.last_sync_error == ""
    assert peak < PEAK_BOUND


def test_a_huge_literal_in_an_answer_no_message_can_be_blamed_for_fails_the_run_with_a_clear_code(
        fake_imap, make_account, user):
    server = fake_imap({"literal_in": "list"})
    account = v3_account_on(server, make_account, user)
    added, peak = peak_of(lambda: engine.sync(account))
    assert added == 0
    account.refresh_from_db()
    assert account.last_sync_error == "too_large"
    assert not SkippedMessage.objects.exists()
    assert peak < PEAK_BOUND


def test_the_migration_check_names_a_huge_literal(fake_imap):
    server = fake_imap({"literal_in": "list"})
    with pytest.raises(MailboxError) as error:
        flow.verify(ImapSettings("127.0.0.1", server.port, "ssl", "anna"), "geheim")
    assert error.value.code == "too_large"


def test_an_answer_that_trickles_is_cut_at_the_time_cap(fake_imap, make_account, user, settings):
    settings.IMAP_COMMAND_MAX_SECONDS = 1  # each byte comes within MAIL_CONNECT_TIMEOUT; the answer takes 8 s
    server = fake_imap({"drip_in": "fetch"})
    account = v3_account_on(server, make_account, user)
    assert engine.sync(account) == 0
    account.refresh_from_db()
    assert account.last_sync_error == "too_slow"
    assert server.connections == 1  # a slow server is not asked again message by message


def test_an_honest_server_syncs_under_the_caps(fake_imap, make_account, user):
    server = fake_imap()
    account = v3_account_on(server, make_account, user)
    assert engine.sync(account) == 3
    assert subjects(account) == ["drei", "eins", "riesig"]


def test_a_message_bigger_than_the_cap_on_a_real_server_is_skipped_and_recorded(imap_account, dovecot, mailbox,
                                                                               mail_settings, settings):
    settings.IMAP_MAX_MESSAGE_BYTES = 1024 * 1024
    _switch_to_v3(imap_account, dovecot, mailbox)
    # 12 MB of recipients: the header fields the sync fetches are bigger than the cap.
    recipients = ",\r\n ".join(f"empfaenger{n:07d}@example.org" for n in range(400_000))
    big = make_message(subject="an alle").replace(b"To: postfach@example.org", b"To: " + recipients.encode())
    assert len(big) > 12_000_000
    dovecot.deliver(mailbox[0], make_message(subject="eins"), big, make_message(subject="drei"))
    added, peak = peak_of(lambda: sync_account(imap_account.pk))
    assert added == 2 and subjects(imap_account) == ["drei", "eins"]
    skipped = SkippedMessage.objects.get(account=imap_account)
    assert skipped.reason == "too_large" and skipped.reference.endswith(":2")
    imap_account.refresh_from_db()
    assert (imap_account.status, imap_account.last_sync_error) == ("active", "")
    assert peak < PEAK_BOUND


# --- a login answered late (servers delay logins after failed ones) -----------------------------------------

def test_a_login_answered_late_waits_longer_than_other_answers(fake_imap, settings):
    settings.MAIL_CONNECT_TIMEOUT, settings.MAIL_LOGIN_TIMEOUT = 1, 10
    server = fake_imap({"login_delay": 2.5})
    assert "INBOX" in flow.verify(ImapSettings("127.0.0.1", server.port, "ssl", "anna"), "geheim")


def test_a_login_never_answered_is_named_as_such_not_unreachable(fake_imap, settings):
    settings.MAIL_CONNECT_TIMEOUT, settings.MAIL_LOGIN_TIMEOUT = 1, 1
    server = fake_imap({"login_delay": 3})
    with pytest.raises(MailboxError) as error:
        flow.verify(ImapSettings("127.0.0.1", server.port, "ssl", "anna"), "geheim")
    assert error.value.code == "login_slow" and not error.value.permanent
