"""Microsoft sign-in: MSAL auth code + PKCE against the fake identity platform and Graph."""

import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
from celery.signals import before_task_publish
from django.test import Client
from django.urls import reverse

from migration import services, steps
from migration.microsoft import client as ms_client
from migration.microsoft.client import MicrosoftError
from migration.models import Migration, MigrationEvent
from sync import crypto
from sync.models import FolderState, MailAccount, SyncedMessage
from sync.runs import sync_account
from tests.conftest import wait_for
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    browser_get, fake_microsoft_server, local, microsoft, ms_account, query_of, sign_in,
)


def _waiting(user, account) -> Migration:
    """A migration that the worker detected and that waits for the sign-in."""
    migration = services.start_migration(user=user, account=account)
    assert steps.run_migration(migration.pk) == "awaiting_user"
    return Migration.objects.get(pk=migration.pk)


def _v2_imported(account, messages, high_water):
    FolderState.objects.create(account=account, name="INBOX", v2_high_water=high_water)
    for message in messages:
        SyncedMessage.objects.create(
            account=account, dedup_key=message.internet_message_id.strip("<>"), message_id=message.internet_message_id,
            folder="INBOX", subject=message.subject, received_at=message.received, imported_by="v2",
        )


@pytest.mark.django_db(transaction=True)
def test_it_migrates_a_microsoft_account_end_to_end(client, user, ms_account, microsoft, celery_worker_thread):
    address = ms_account.address
    now = datetime.now(timezone.utc)
    old = now - timedelta(days=3)
    before = [microsoft.deliver(address, subject=f"vorher {n}", received=old) for n in (1, 2)]
    _v2_imported(ms_account, before, high_water=old)
    microsoft.deliver(address, subject="zwischen V2-Abruf und Wechsel", received=now - timedelta(hours=1))
    microsoft.deliver(address, subject="gesendet", folder="sentitems", received=now - timedelta(minutes=30))
    microsoft.deliver(address, subject="im Papierkorb", folder="deleteditems")
    microsoft.deliver(address, subject="Entwurf", folder="drafts")

    client.force_login(user)
    client.post(reverse("migration-start", args=[ms_account.pk]))
    migration = Migration.objects.get(account=ms_account)
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status == "awaiting_user")
    migration.refresh_from_db()
    assert migration.provider_kind == "microsoft"
    assert (migration.detected["provider"], migration.detected["tenant"]) == ("microsoft365", "contoso.com")
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "Bei Microsoft anmelden" in page and "Zurück" in page

    response, authorize, back = sign_in(client, microsoft, migration)
    sent = query_of(authorize)
    assert sent["login_hint"] == address and sent["code_challenge_method"] == "S256" and "prompt" not in sent
    assert set(sent["scope"].split()) >= {"User.Read", "Mail.Read", "offline_access", "openid"}
    assert sent["redirect_uri"] == "http://127.0.0.1:8000/migration/microsoft/callback/" or \
        sent["redirect_uri"].endswith("/migration/microsoft/callback/")
    assert response.status_code == 302 and response["Location"] == reverse("migration-detail", args=[migration.pk])
    microsoft.deliver(address, subject="während")

    wait_for(lambda: Migration.objects.get(pk=migration.pk).status in ("done", "failed"))
    migration.refresh_from_db()
    assert migration.status == "done", migration.error_code
    assert migration.secret_encrypted == ""
    ms_account.refresh_from_db()
    assert ms_account.engine == "v3" and ms_account.status == "active" and ms_account.secret_encrypted == ""
    tokens = crypto.decrypt_json(ms_account.token_cache_encrypted)
    assert tokens["home_account_id"].endswith(microsoft.contoso.id) and "RefreshToken" in tokens["cache"]
    folders = {f.name: f for f in FolderState.objects.filter(account=ms_account)}
    assert set(folders) == {"INBOX", "Sent Items", "Archive"}
    assert all(f.delta_link.startswith(microsoft.base) and f.graph_folder_id for f in folders.values())
    assert migration.cursors["INBOX"]["id_type"] == "ImmutableId"

    wait_for(lambda: SyncedMessage.objects.filter(account=ms_account, subject="während").exists())
    microsoft.deliver(address, subject="danach")
    # The worker's run goes on with the other folders; ours would find the account leased.
    wait_for(lambda: MailAccount.objects.get(pk=ms_account.pk).sync_lease_token == "")
    sync_account(ms_account.pk)
    sync_account(ms_account.pk)  # a second run must not duplicate anything

    subjects = sorted(SyncedMessage.objects.filter(account=ms_account).values_list("subject", flat=True))
    assert subjects == sorted(["vorher 1", "vorher 2", "zwischen V2-Abruf und Wechsel", "gesendet", "während",
                               "danach"])
    assert set(SyncedMessage.objects.filter(subject__startswith="vorher").values_list("imported_by", flat=True)) == {"v2"}
    assert SyncedMessage.objects.get(subject="danach").imported_by == "v3"
    statuses = list(MigrationEvent.objects.filter(migration=migration).values_list("to_status", flat=True))
    assert statuses == ["pending", "detecting", "awaiting_user", "verifying", "handing_over", "done"]
    graph_calls = [r for r in microsoft.requests if r["path"].startswith("/v1.0/me/mailFolders/")]
    assert graph_calls and all('IdType="ImmutableId"' in r["prefer"] for r in graph_calls)

    page = client.get(reverse("settings-mail")).content.decode()
    assert "Zu V3 migrieren" not in page and 'data-testid="v2-banner"' not in page


@pytest.mark.django_db
def test_it_keeps_codes_and_tokens_out_of_events_logs_tasks_and_admin(
    client, admin_client, user, ms_account, microsoft, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.DEBUG)
    migration = _waiting(user, ms_account)
    client.force_login(user)
    published = []

    def capture(sender=None, body=None, headers=None, **kwargs):
        published.append((sender, body, headers))

    # The message as it goes to the broker (the callback's on_commit enqueues the worker).
    before_task_publish.connect(capture, weak=False)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            _, _, back = sign_in(client, microsoft, migration)
    finally:
        before_task_publish.disconnect(capture)
    code = query_of(back)["code"]
    assert code not in Migration.objects.get(pk=migration.pk).secret_encrypted  # encrypted at rest
    flow = crypto.decrypt_json(Migration.objects.get(pk=migration.pk).secret_encrypted)["flow"]
    assert steps.run_migration(migration.pk) == "done"
    secrets = [code, microsoft.client_secret, *microsoft.refresh_tokens, *microsoft.access_tokens]
    trail = " ".join(f"{e.reason} {e.actor}" for e in MigrationEvent.objects.filter(migration=migration))
    pages = admin_client.get(reverse("admin:migration_migration_change", args=[migration.pk])).content.decode()
    pages += admin_client.get(reverse("admin:sync_mailaccount_change", args=[ms_account.pk])).content.decode()
    for secret in secrets:
        assert secret not in trail and secret not in caplog.text and secret not in pages
    # Tasks carry ids only: no code, verifier or token on the broker.
    assert [name for name, _, _ in published] == ["migration.tasks.run_migration"]
    (_, (args, kwargs, _embed), headers), = published
    assert list(args) == [migration.pk] and kwargs == {}
    assert all(type(arg) is int for arg in args)
    on_the_wire = repr(args) + repr(kwargs) + repr(headers)
    for secret in (code, flow["code_verifier"], flow["state"], microsoft.client_secret):
        assert secret not in on_the_wire


@pytest.mark.django_db
def test_it_refuses_a_callback_whose_state_it_did_not_send(client, user, other_user, ms_account, microsoft):
    migration = _waiting(user, ms_account)
    client.force_login(user)
    response = client.post(reverse("microsoft-sign-in", args=[migration.pk]))
    back = browser_get(microsoft, response["Location"])
    answer = query_of(back)
    events = MigrationEvent.objects.filter(migration=migration).count()

    forged = client.get(reverse("microsoft-callback"), {"code": answer["code"], "state": "forged-state"})
    assert forged.status_code == 400
    assert "gehört nicht zu Ihrer Anmeldung" in forged.content.decode()
    # The genuine answer in another user's browser: that session never sent this state.
    stranger = Client()
    stranger.force_login(other_user)
    assert stranger.get(local(back)).status_code == 400
    migration.refresh_from_db()
    assert migration.status == "awaiting_user" and migration.secret_encrypted == ""
    assert MigrationEvent.objects.filter(migration=migration).count() == events

    assert client.get(local(back)).status_code == 302  # the right browser still gets through
    assert Migration.objects.get(pk=migration.pk).status == "verifying"


@pytest.mark.django_db
def test_it_refuses_a_replayed_callback_and_a_replayed_code(client, user, make_account, ms_account, microsoft):
    migration = _waiting(user, ms_account)
    client.force_login(user)
    _, _, back = sign_in(client, microsoft, migration)
    spent = crypto.decrypt_json(Migration.objects.get(pk=migration.pk).secret_encrypted)
    assert client.get(local(back)).status_code == 400  # the flow left the session with its first use
    assert steps.run_migration(migration.pk) == "done"

    # The same code offered to the token endpoint again: Microsoft refuses, the worker fails cleanly.
    with pytest.raises(MicrosoftError) as refused:
        ms_client.redeem(spent["flow"], spent["auth_response"])
    assert refused.value.code == "ms_code_rejected" and refused.value.aadsts == 54005
    second = _waiting(user, make_account(user, "chef@contoso.com", provider_kind="microsoft"))
    services.transition(second, to="verifying", reason="test", secret_encrypted=crypto.encrypt_json(spent))
    assert steps.run_migration(second.pk) == "failed"
    second.refresh_from_db()
    assert second.error_code == "ms_code_rejected" and second.account.engine == "v2"


@pytest.mark.django_db
def test_it_fails_on_a_wrong_pkce_verifier(client, user, ms_account, microsoft):
    migration = _waiting(user, ms_account)
    client.force_login(user)
    response = client.post(reverse("microsoft-sign-in", args=[migration.pk]))
    back = browser_get(microsoft, response["Location"])
    session = client.session
    flows = session["microsoft_flows"]
    flows[query_of(back)["state"]]["flow"]["code_verifier"] = "x" * 64  # not the one of the challenge that was sent
    session["microsoft_flows"] = flows
    session.save()
    assert client.get(local(back)).status_code == 302
    assert steps.run_migration(migration.pk) == "failed"
    migration.refresh_from_db()
    assert migration.error_code == "ms_code_rejected" and migration.secret_encrypted == ""
    ms_account.refresh_from_db()
    assert ms_account.engine == "v2" and ms_account.token_cache_encrypted == ""
    assert [r for r in microsoft.requests if r["query"].get("grant_type") == "authorization_code"]
    assert "Anmeldecode war ungültig" in client.get(reverse("migration-detail", args=[migration.pk])).content.decode()


@pytest.mark.django_db
def test_it_refuses_a_different_identity_and_retries_with_account_selection(client, user, ms_account, microsoft):
    migration = _waiting(user, ms_account)
    client.force_login(user)
    microsoft.sign_in_as = "chef@contoso.com"  # the browser was signed in as someone else
    sign_in(client, microsoft, migration)
    assert steps.run_migration(migration.pk) == "failed"
    migration.refresh_from_db()
    assert migration.error_code == "ms_wrong_account" and migration.secret_encrypted == "" and migration.cursors == {}
    ms_account.refresh_from_db()
    assert ms_account.engine == "v2" and ms_account.token_cache_encrypted == ""
    assert not FolderState.objects.filter(account=ms_account).exclude(graph_folder_id="").exists()
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "mit einem anderen Konto angemeldet" in page and "Erneut versuchen" in page

    client.post(reverse("migration-retry", args=[migration.pk]))
    microsoft.sign_in_as = None
    _, authorize, _ = sign_in(client, microsoft, Migration.objects.get(pk=migration.pk))
    assert query_of(authorize)["prompt"] == "select_account"
    assert steps.run_migration(migration.pk) == "done"


@pytest.mark.django_db
def test_it_signs_in_a_personal_outlook_account(client, user, make_account, microsoft, settings):
    settings.MS_AUTHORITY = f"{microsoft.base}/common"
    from tests.fakes.microsoft import CONSUMERS

    microsoft.add_user("max@outlook.com", microsoft.tenants[CONSUMERS])
    account = make_account(user, "max@outlook.com", provider_kind="microsoft")
    migration = _waiting(user, account)
    client.force_login(user)
    _, authorize, _ = sign_in(client, microsoft, migration)
    assert "/common/oauth2/v2.0/authorize" in authorize
    assert steps.run_migration(migration.pk) == "done"


@pytest.mark.django_db
@pytest.mark.parametrize("address", ["max@outlook.com", "erika@hotmail.com"])
def test_it_migrates_a_personal_account_whose_me_has_no_mail(client, user, make_account, microsoft, settings, address):
    settings.MS_AUTHORITY = f"{microsoft.base}/common"
    from tests.fakes.microsoft import CONSUMERS

    microsoft.add_user(address, microsoft.tenants[CONSUMERS])  # a personal account: /me says mail: null
    microsoft.deliver(address, subject="privat")
    account = make_account(user, address, provider_kind="microsoft")
    migration = _waiting(user, account)
    client.force_login(user)
    sign_in(client, microsoft, migration)
    assert steps.run_migration(migration.pk) == "done"
    me = [r for r in microsoft.requests if r["path"] == "/v1.0/me"]
    assert me and microsoft.users[address].mail is None
    assert sync_account(account.pk) == 1


@pytest.mark.django_db
def test_a_personal_account_named_like_a_work_address_is_not_the_work_mailbox(client, user, make_account, microsoft,
                                                                              settings):
    """A personal Microsoft account may have been made with a work address as its sign-in name; its mailbox
    is an Outlook.com mailbox, not the one of contoso.com's directory."""
    settings.MS_AUTHORITY = f"{microsoft.base}/common"
    from tests.fakes.microsoft import CONSUMERS

    microsoft.add_user("kai@contoso.com", microsoft.tenants[CONSUMERS])
    migration = _waiting(user, make_account(user, "kai@contoso.com", provider_kind="microsoft"))
    client.force_login(user)
    sign_in(client, microsoft, migration)
    assert steps.run_migration(migration.pk) == "failed"
    assert Migration.objects.get(pk=migration.pk).error_code == "ms_wrong_account"


FOREIGN = "3f2e1d0c-9b8a-4765-8432-10fedcba9876"


@pytest.mark.django_db
@pytest.mark.parametrize("claimed", [dict(mail="anna@contoso.com"), dict(aliases=["anna@contoso.com"])])
def test_it_refuses_an_address_that_a_foreign_directory_gave_its_user(client, user, ms_account, microsoft, claimed):
    """An admin of another directory can set any mail value on their user; only contoso.com's directory vouches."""
    evil = microsoft.add_tenant(FOREIGN, {"evil.example"})
    microsoft.add_user("mallory@evil.example", evil, upn="mallory@evil.example", **claimed)
    migration = _waiting(user, ms_account)
    client.force_login(user)
    microsoft.sign_in_as = "mallory@evil.example"
    sign_in(client, microsoft, migration)
    assert steps.run_migration(migration.pk) == "failed"
    migration.refresh_from_db()
    assert migration.error_code == "ms_wrong_account" and migration.secret_encrypted == ""
    ms_account.refresh_from_db()
    assert ms_account.engine == "v2" and ms_account.token_cache_encrypted == ""


@pytest.mark.django_db
def test_it_waits_when_the_mail_domains_directory_cannot_be_looked_up(client, user, ms_account, microsoft):
    migration = _waiting(user, ms_account)
    client.force_login(user)
    sign_in(client, microsoft, migration)
    microsoft.identity_outage = {"status": 503, "retry_after": "30", "on": ("discovery",), "segments": {"contoso.com"}}
    steps.run_migration(migration.pk)
    migration.refresh_from_db()
    assert migration.status == "verifying" and migration.error_code == "ms_unreachable" and migration.secret_encrypted
    microsoft.identity_outage = None
    Migration.objects.filter(pk=migration.pk).update(retry_at=migration.retry_at - timedelta(hours=1))  # back-off over
    assert steps.run_migration(migration.pk) == "done"


@pytest.mark.django_db
def test_it_tells_the_user_when_microsoft_is_not_configured(client, user, ms_account, microsoft, settings):
    settings.MS_CLIENT_ID = ""
    migration = _waiting(user, ms_account)
    client.force_login(user)
    response = client.post(reverse("microsoft-sign-in", args=[migration.pk]), follow=True)
    assert "noch nicht eingerichtet" in response.content.decode()
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"


@pytest.mark.django_db
def test_it_only_signs_in_for_the_owner(client, other_user, user, ms_account, microsoft):
    migration = _waiting(user, ms_account)
    client.force_login(other_user)
    assert client.post(reverse("microsoft-sign-in", args=[migration.pk])).status_code == 404


@pytest.mark.django_db
def test_it_continues_without_redeeming_twice_after_a_crash(client, user, ms_account, microsoft):
    # The worker redeemed the code and kept the tokens, then died before moving on.
    migration = _waiting(user, ms_account)
    client.force_login(user)
    sign_in(client, microsoft, migration)
    from migration.microsoft import flow

    migration.refresh_from_db()
    flow._redeem(migration, crypto.decrypt_json(migration.secret_encrypted))
    assert steps.run_migration(migration.pk) == "done"  # the redelivered task
    assert steps.run_migration(migration.pk) == "done"
    assert len([r for r in microsoft.requests if r["query"].get("grant_type") == "authorization_code"]) == 1
    assert MigrationEvent.objects.filter(migration=migration, to_status="done").count() == 1


@pytest.mark.django_db
def test_weiter_mit_microsoft_in_the_login_mask_leads_to_the_microsoft_sign_in(client, user, make_account, microsoft):
    account = make_account(user, "anna@contoso.com")  # detected as IMAP
    migration = _waiting(user, account)
    client.force_login(user)
    client.post(reverse("migration-choose", args=[migration.pk]), {"provider": "microsoft365"})
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "Bei Microsoft anmelden" in page and 'name="password"' not in page
    sign_in(client, microsoft, Migration.objects.get(pk=migration.pk))
    assert steps.run_migration(migration.pk) == "done"
    account.refresh_from_db()
    assert account.engine == "v3" and account.provider_kind == "microsoft" and account.token_cache_encrypted
    microsoft.deliver(account.address, subject="über Graph")
    sync_account(account.pk)
    assert SyncedMessage.objects.filter(account=account, subject="über Graph").exists()


@pytest.mark.django_db
def test_a_second_tab_does_not_break_the_first_tabs_sign_in(client, user, ms_account, microsoft):
    migration = _waiting(user, ms_account)
    client.force_login(user)
    first = client.post(reverse("microsoft-sign-in", args=[migration.pk]))["Location"]
    second = client.post(reverse("microsoft-sign-in", args=[migration.pk]))["Location"]  # another tab, a double click
    assert query_of(first)["state"] != query_of(second)["state"]
    back = browser_get(microsoft, first)
    assert client.get(local(back)).status_code == 302  # no state mismatch
    assert Migration.objects.get(pk=migration.pk).status == "verifying"
    assert steps.run_migration(migration.pk) == "done"
    # The other tab's flow is still there, and still single use.
    assert len(client.session["microsoft_flows"]) == 1


@pytest.mark.django_db
def test_it_keeps_few_and_young_flows_in_the_session(client, user, ms_account, microsoft, monkeypatch):
    from migration.microsoft import flow

    migration = _waiting(user, ms_account)
    client.force_login(user)
    starts = [client.post(reverse("microsoft-sign-in", args=[migration.pk]))["Location"] for _ in range(6)]
    kept = client.session["microsoft_flows"]
    assert len(kept) == flow.MAX_FLOWS and query_of(starts[0])["state"] not in kept  # the oldest went
    # After ten minutes a flow (and its PKCE verifier) is gone: its callback changes nothing.
    back = browser_get(microsoft, starts[-1])
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + flow.FLOW_MAX_AGE + 1)
    response = client.get(local(back))
    assert response.status_code == 400 and "gehört nicht zu Ihrer Anmeldung" in response.content.decode()
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"
    assert client.session["microsoft_flows"] == {}


@pytest.mark.django_db
def test_an_imap_migration_cannot_be_sent_to_microsoft(client, user, make_account, microsoft):
    migration = _waiting(user, make_account(user, "anna@contoso.com"))  # detected as IMAP
    assert migration.provider_kind == "imap"
    client.force_login(user)
    response = client.post(reverse("microsoft-sign-in", args=[migration.pk]))
    assert response["Location"] == reverse("migration-detail", args=[migration.pk])  # not to Microsoft
    assert "microsoft_flows" not in client.session


@pytest.mark.django_db
def test_an_alias_of_the_signed_in_mailbox_is_the_same_mailbox(client, user, make_account, microsoft):
    microsoft.add_user("lena.meier@contoso.com", microsoft.contoso, aliases=["vertrieb@contoso.com"])
    account = make_account(user, "vertrieb@contoso.com", provider_kind="microsoft")  # the CRM knows the alias
    migration = _waiting(user, account)
    client.force_login(user)
    microsoft.sign_in_as = "lena.meier@contoso.com"  # Microsoft signs in with the primary name
    sign_in(client, microsoft, migration)
    assert steps.run_migration(migration.pk) == "done"
    # An address that is no alias of this mailbox is still another identity.
    other = _waiting(user, make_account(user, "einkauf@contoso.com", provider_kind="microsoft"))
    sign_in(client, microsoft, other)
    assert steps.run_migration(other.pk) == "failed"
    assert Migration.objects.get(pk=other.pk).error_code == "ms_wrong_account"
