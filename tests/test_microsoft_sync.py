"""V3 Graph sync after the handoff: delta paging, dedup, token refresh, revoked grants, re-connect."""

import pytest
from django.urls import reverse

from migration import services, steps
from sync import crypto
from sync.models import FolderState, MailAccount, SyncedMessage
from sync.selectors import accounts_due_for_sync
from sync.runs import sync_account
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    browser_get, fake_microsoft_server, local, microsoft, migrated, ms_account, sign_in,
)

pytestmark = pytest.mark.django_db


def _subjects(account):
    return sorted(SyncedMessage.objects.filter(account=account).values_list("subject", flat=True))


def _token_requests(fake, grant):
    return [r for r in fake.requests if r["query"].get("grant_type") == grant]


def test_it_follows_delta_pages_and_never_duplicates(migrated, microsoft):
    address = migrated.address
    for n in range(5):  # the fake pages by two: three pages, then the delta link
        microsoft.deliver(address, subject=f"neu {n}")
    microsoft.deliver(address, subject="ohne Message-ID", internet_message_id=None)
    assert sync_account(migrated.pk) == 6
    assert sync_account(migrated.pk) == 0
    assert _subjects(migrated) == sorted([f"neu {n}" for n in range(5)] + ["ohne Message-ID"])
    assert any("$skiptoken" in str(r["query"]) for r in microsoft.requests)
    migrated.refresh_from_db()
    assert migrated.status == "active" and migrated.last_sync_at


def test_it_dedupes_a_message_that_v2_already_imported(migrated, microsoft):
    message = microsoft.deliver(migrated.address, subject="schon da")
    SyncedMessage.objects.create(account=migrated, dedup_key=message.internet_message_id.strip("<>"),
                                 message_id=message.internet_message_id, folder="INBOX", subject="schon da",
                                 imported_by="v2")
    assert sync_account(migrated.pk) == 0
    assert SyncedMessage.objects.filter(account=migrated, subject="schon da").count() == 1


def test_it_starts_a_new_round_when_graph_forgot_the_delta_state(migrated, microsoft):
    microsoft.deliver(migrated.address, subject="vorher")
    sync_account(migrated.pk)
    inbox = FolderState.objects.get(account=migrated, name="INBOX")
    foreign = inbox.delta_link.split("?")[0] + "?$deltatoken=bm90LXZhbGlk"
    FolderState.objects.filter(pk=inbox.pk).update(delta_link=foreign)  # the fake answers 410 SyncStateNotFound
    microsoft.deliver(migrated.address, subject="nachher")
    sync_account(migrated.pk)
    assert _subjects(migrated) == ["nachher", "vorher"]
    assert FolderState.objects.get(pk=inbox.pk).delta_link != foreign


def test_it_refreshes_the_access_token_with_the_refresh_token(migrated, microsoft):
    before = migrated.token_cache_encrypted
    refreshes = len(_token_requests(microsoft, "refresh_token"))
    microsoft.expire_access_tokens()  # Microsoft refuses the cached token before MSAL expects it
    microsoft.deliver(migrated.address, subject="nach Ablauf")
    assert sync_account(migrated.pk) == 1
    assert len(_token_requests(microsoft, "refresh_token")) == refreshes + 1
    migrated.refresh_from_db()
    assert migrated.token_cache_encrypted != before and migrated.status == "active"
    # MSAL's own expiry: a token that expires within five minutes is refreshed before use.
    microsoft.access_token_lifetime = 60
    microsoft.expire_access_tokens()
    sync_account(migrated.pk)
    sync_account(migrated.pk)
    assert len(_token_requests(microsoft, "refresh_token")) == refreshes + 3


def test_a_revoked_refresh_token_asks_the_user_to_reconnect(client, migrated, microsoft):
    microsoft.revoke_refresh_tokens(migrated.address)
    microsoft.expire_access_tokens()
    assert sync_account(migrated.pk) == 0
    migrated.refresh_from_db()
    assert migrated.status == "reconnect" and migrated.last_sync_error == "ms_reconnect"
    assert migrated not in accounts_due_for_sync(v2_running=True)
    calls = len(microsoft.requests)
    assert sync_account(migrated.pk) == 0 and len(microsoft.requests) == calls  # no more tries
    page = client.get(reverse("settings-mail")).content.decode()
    assert "Neu verbinden" in page and "abgelaufen oder wurde widerrufen" in page

    microsoft.deliver(migrated.address, subject="während getrennt")
    response = client.post(reverse("microsoft-reconnect", args=[migrated.pk]))
    back = client.get(local(browser_get(microsoft, response["Location"])), follow=True)
    assert "ist wieder verbunden" in back.content.decode()
    migrated.refresh_from_db()
    assert migrated.status == "active" and migrated.last_sync_error == ""
    assert sync_account(migrated.pk) == 1
    assert "während getrennt" in _subjects(migrated)


def test_reconnect_refuses_another_identity(client, migrated, microsoft):
    MailAccount.objects.filter(pk=migrated.pk).update(status="reconnect")
    before = MailAccount.objects.get(pk=migrated.pk).token_cache_encrypted
    microsoft.sign_in_as = "chef@contoso.com"
    response = client.post(reverse("microsoft-reconnect", args=[migrated.pk]))
    back = client.get(local(browser_get(microsoft, response["Location"])), follow=True)
    assert "mit einem anderen Konto angemeldet" in back.content.decode()
    account = MailAccount.objects.get(pk=migrated.pk)
    assert account.status == "reconnect" and account.token_cache_encrypted == before


def test_reconnect_refuses_an_address_a_foreign_directory_gave_its_user(client, migrated, microsoft):
    evil = microsoft.add_tenant("3f2e1d0c-9b8a-4765-8432-10fedcba9876", {"evil.example"})
    microsoft.add_user("mallory@evil.example", evil, upn="mallory@evil.example", mail=migrated.address)
    MailAccount.objects.filter(pk=migrated.pk).update(status="reconnect")
    before = MailAccount.objects.get(pk=migrated.pk).token_cache_encrypted
    microsoft.sign_in_as = "mallory@evil.example"
    response = client.post(reverse("microsoft-reconnect", args=[migrated.pk]))
    back = client.get(local(browser_get(microsoft, response["Location"])), follow=True)
    assert "mit einem anderen Konto angemeldet" in back.content.decode()
    account = MailAccount.objects.get(pk=migrated.pk)
    assert account.status == "reconnect" and account.token_cache_encrypted == before


def test_the_beat_syncs_microsoft_accounts_without_an_imap_host(migrated):
    assert migrated.imap_host == ""
    # Due now: the handoff's own first run may already have set its next due time (the adaptive interval).
    MailAccount.objects.filter(pk=migrated.pk).update(sync_due_at=None, sync_queued_at=None, sync_lease_until=None)
    assert migrated in accounts_due_for_sync(v2_running=False)
    assert crypto.decrypt_json(migrated.token_cache_encrypted)["home_account_id"]


def test_a_sync_does_not_fetch_microsofts_configuration_again(migrated, microsoft):
    sync_account(migrated.pk)  # warm
    before = len(microsoft.requests)
    microsoft.deliver(migrated.address, subject="ohne Umwege")
    assert sync_account(migrated.pk) == 1
    discovery = [r for r in microsoft.requests[before:] if "openid-configuration" in r.get("path", "")]
    assert discovery == []
