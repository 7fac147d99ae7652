"""Byte and time caps on EWS answers (issue 10, item 2): a ~400 KB gzip answer that inflates to 400 MB raised a
worker's memory by ~470 MB, because exchangelib reads every body whole. Against the fake EWS endpoint, through
the worker's own code paths (the sync run, the migration step, the message page)."""

import tracemalloc

import pytest
from django.urls import reverse

from migration import services, steps
from migration.models import Migration
from sync import egress
from sync.exchange import client as ews
from sync.models import AccountStatus, MailAccount, SyncedMessage
from sync.runs import sync_account
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews  # noqa: F401

pytestmark = pytest.mark.django_db
MiB = 2**20


@pytest.fixture
def server(fake_ews):
    return ews.EwsSettings(url=fake_ews.url, username=EWS_USER, address="anna@firma.test", auth_type="basic",
                           ca_pem=fake_ews.cert_pem, version="15.1.2507.6")


@pytest.fixture
def ews_account(make_account, user, server):
    account = make_account(user, "anna@firma.test", provider_kind="exchange", engine="v3")
    ews.apply_to_account(account, server=server, password=EWS_PASSWORD)
    account.save()
    return account


def _peak_while(run) -> tuple[object, int]:
    """run()'s result and the most memory Python held meanwhile (tracemalloc's peak, in bytes)."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_compressed_bomb_ends_the_sync_run_at_the_byte_cap_with_bounded_memory(ews_account, fake_ews, settings):
    assert settings.EWS_MAX_RESPONSE_BYTES == 16 * MiB  # the documented default
    fake_ews.deliver("inbox", subject="vorher")
    fake_ews.bomb, fake_ews.bomb_bytes = "SyncFolderItems", 400 * MiB
    new, peak = _peak_while(lambda: sync_account(ews_account.pk))
    assert new == 0 and "bomb" in fake_ews.calls
    account = MailAccount.objects.get(pk=ews_account.pk)
    assert (account.status, account.last_sync_error) == (AccountStatus.ERROR, "response_too_large")
    # The cap plus what the run needs besides; the whole body would be 400 MB (and twice that while joined).
    assert peak < settings.EWS_MAX_RESPONSE_BYTES + 32 * MiB, f"peak {peak // MiB} MiB"
    assert fake_ews.calls.count("bomb") == 1  # not retried: the same answer would come again

    fake_ews.bomb = None
    assert sync_account(ews_account.pk) == 1  # the next run goes on
    assert MailAccount.objects.get(pk=ews_account.pk).last_sync_error == ""


def test_the_settings_page_names_the_cap(signed_in, ews_account, fake_ews):
    fake_ews.bomb, fake_ews.bomb_bytes = "*", 64 * MiB
    sync_account(ews_account.pk)
    page = signed_in.get(reverse("settings-mail")).content.decode()
    assert "ungewöhnlich große Antwort" in page


def test_a_bomb_during_verify_fails_the_migration_with_its_reason(client, user, make_account, fake_ews):
    account = make_account(user, "anna@firma.test", provider_kind="exchange", username="anna")
    migration = services.start_migration(user=user, account=account)
    steps.run_migration(migration.pk)
    connection = {"ews_url": fake_ews.url, "username": EWS_USER, "auth_type": "basic", "ca_pem": fake_ews.cert_pem}
    services.submit_credentials(migration=Migration.objects.get(pk=migration.pk), connection=connection,
                                password=EWS_PASSWORD, actor="test")
    fake_ews.bomb, fake_ews.bomb_bytes = "FindFolder", 64 * MiB
    assert steps.run_migration(migration.pk) == "failed"
    assert Migration.objects.get(pk=migration.pk).error_code == "response_too_large"
    client.force_login(user)
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "ungewöhnlich große Antwort" in page and "Ihr Konto synchronisiert unverändert weiter über V2." in page


def test_a_bomb_on_the_message_page_says_the_message_is_too_large(signed_in, ews_account, fake_ews):
    item = fake_ews.deliver("inbox", subject="Riesig")
    message = SyncedMessage.objects.create(
        account=ews_account, dedup_key=item["message_id"].strip("<>"), message_id=item["message_id"], folder="INBOX",
        subject=item["subject"], received_at=item["received"], provider_id=item["id"], imported_by="v3")
    fake_ews.bomb, fake_ews.bomb_bytes = "GetItem", 64 * MiB
    page = signed_in.get(reverse("message-detail", args=[message.pk])).content.decode()
    assert "zu groß, um sie hier anzuzeigen" in page


def test_an_answer_that_drips_ends_at_the_time_cap(ews_account, fake_ews, settings):
    settings.EWS_MAX_RESPONSE_SECONDS = 1
    fake_ews.deliver("inbox", subject="langsam")
    fake_ews.drip_seconds, fake_ews.drip_operation = 0.1, "SyncFolderItems"  # each read is quick, the answer is not
    assert sync_account(ews_account.pk) == 0
    assert MailAccount.objects.get(pk=ews_account.pk).last_sync_error == "response_too_slow"
    assert "drip" in fake_ews.calls


def test_the_caps_leave_ordinary_answers_alone(server, fake_ews, settings):
    settings.EWS_MAX_RESPONSE_BYTES = 64 * 1024
    fake_ews.page_size = 100
    for number in range(300):
        fake_ews.deliver("inbox", subject=f"alt {number}")
    assert ews.verify(server, EWS_PASSWORD)["INBOX"]["ews_sync_state"]
    settings.EWS_MAX_RESPONSE_BYTES = 16 * 1024  # a page of 100 items' ids is bigger than that
    with pytest.raises(ews.MailboxError) as error:
        ews.verify(server, EWS_PASSWORD)
    assert (error.value.code, error.value.permanent) == (egress.ResponseTooLarge.code, True)
