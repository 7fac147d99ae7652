"""Microsoft's services down or throttling: transient errors keep the tokens and the work, and try again later."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import translation

from migration import errors, services, steps
from migration.microsoft import client as ms_client
from migration.microsoft import tasks
from migration.models import Migration, TenantConsent
from sync.microsoft import graph
from sync.models import MailAccount
from sync.runs import sync_account
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    browser_get, fake_microsoft_server, local, microsoft, migrated, ms_account, sign_in,
)

pytestmark = pytest.mark.django_db

NORTHWIND = "c0ffee00-0000-4000-8000-000000000003"


@pytest.mark.parametrize("status, endpoint", [(503, "token"), (429, "token"), (500, "discovery"), (429, "discovery")])
def test_it_records_an_outage_of_the_sign_in_service_and_keeps_the_tokens(migrated, microsoft, status, endpoint):
    before = migrated.token_cache_encrypted
    microsoft.expire_access_tokens()  # the run must go to the token endpoint
    ms_client.HTTP_CACHE.clear()  # and fetch the OpenID configuration again
    microsoft.identity_outage = {"status": status, "retry_after": "30", "on": {endpoint}}
    microsoft.deliver(migrated.address, subject="während der Störung")
    assert sync_account(migrated.pk) == 0
    account = MailAccount.objects.get(pk=migrated.pk)
    assert account.last_sync_error == "ms_unreachable"  # not sync_internal, not ms_protocol
    # An error of this run, retried by the next one: not "Neu verbinden", and the refresh token stays.
    assert account.status == "error" and account.token_cache_encrypted == before

    microsoft.identity_outage = None  # Microsoft is back: the same tokens go on, no new sign-in
    assert sync_account(migrated.pk) == 1
    account.refresh_from_db()
    assert account.last_sync_error == "" and account.status == "active"


def _needing_consent(client, user, make_account, microsoft, address) -> Migration:
    migration = services.start_migration(user=user, account=make_account(user, address, provider_kind="microsoft"))
    assert steps.run_migration(migration.pk) == "awaiting_user"
    client.force_login(user)
    sign_in(client, microsoft, migration)
    migration.refresh_from_db()
    assert migration.status == "awaiting_admin_consent", migration.status
    return migration


@pytest.mark.parametrize("status, endpoints", [(503, {"token", "discovery"}), (429, {"token"})])
def test_the_consent_poll_goes_on_with_the_next_tenant_during_an_outage(
    client, user, make_account, microsoft, status, endpoints
):
    lena = _needing_consent(client, user, make_account, microsoft, "lena@fabrikam.de")
    northwind = microsoft.add_tenant(NORTHWIND, {"northwind.example"}, needs_admin_consent=90094)
    microsoft.add_user("nora@northwind.example", northwind)
    nora = _needing_consent(client, user, make_account, microsoft, "nora@northwind.example")
    microsoft.grant_consent_in_entra(microsoft.fabrikam)
    microsoft.grant_consent_in_entra(northwind)
    ms_client.HTTP_CACHE.clear()
    # fabrikam.de is polled first; its sign-in service answers with an error page.
    microsoft.identity_outage = {"status": status, "retry_after": "10", "on": endpoints, "segments": {"fabrikam.de"}}

    assert tasks.poll_admin_consents() == 1
    assert Migration.objects.get(pk=nora.pk).status == "awaiting_user"
    assert Migration.objects.get(pk=lena.pk).status == "awaiting_admin_consent"

    microsoft.identity_outage = None
    TenantConsent.objects.update(polled_at=None)  # the next poll interval
    assert tasks.poll_admin_consents() == 1
    assert Migration.objects.get(pk=lena.pk).status == "awaiting_user"


def test_reconnect_says_microsoft_is_unreachable_instead_of_failing(client, migrated, microsoft):
    MailAccount.objects.filter(pk=migrated.pk).update(status="reconnect")
    before = MailAccount.objects.get(pk=migrated.pk).token_cache_encrypted
    ms_client.HTTP_CACHE.clear()
    microsoft.identity_outage = {"status": 503, "retry_after": "30", "on": {"discovery"}}
    response = client.post(reverse("microsoft-reconnect", args=[migrated.pk]), follow=True)
    assert response.status_code == 200
    assert "Microsoft war nicht erreichbar" in response.content.decode()

    # Microsoft's sign-in page works, its token endpoint does not: the code cannot be redeemed.
    microsoft.identity_outage = None
    response = client.post(reverse("microsoft-reconnect", args=[migrated.pk]))
    back = browser_get(microsoft, response["Location"])
    microsoft.identity_outage = {"status": 504, "retry_after": "30", "on": {"token"}}
    page = client.get(local(back), follow=True)
    assert page.status_code == 200
    assert "Microsoft war nicht erreichbar" in page.content.decode()
    account = MailAccount.objects.get(pk=migrated.pk)
    assert account.status == "reconnect" and account.token_cache_encrypted == before


def _graph_since(fake, start: int) -> list[dict]:
    return [r for r in fake.requests[start:] if r["path"].startswith("/v1.0/")]


def test_it_waits_out_graph_throttling_and_finishes_the_sync(migrated, microsoft):
    microsoft.deliver(migrated.address, subject="trotz Drosselung")
    start = len(microsoft.requests)
    # Graph throttles the run's first request, then answers it with 504: both are tried again.
    microsoft.graph_throttle = [(429, "1"), (504, "0")]
    assert sync_account(migrated.pk) == 1
    asked = _graph_since(microsoft, start)
    assert microsoft.graph_throttle == []
    assert asked[0]["path"] == asked[1]["path"] == asked[2]["path"] and asked[0]["query"] == asked[2]["query"]
    account = MailAccount.objects.get(pk=migrated.pk)
    assert account.status == "active" and account.last_sync_error == ""


@pytest.mark.parametrize("first, always, tries", [
    ([], (503, "0"), graph.RETRIES + 1),  # at most RETRIES retries
    ([(429, "1")], (503, "5"), 2),  # waited 1 s; 5 s more would pass MAX_RETRY_WAIT
])
def test_it_stops_retrying_graph_within_its_bounds(migrated, microsoft, monkeypatch, first, always, tries):
    monkeypatch.setattr(graph, "MAX_RETRY_WAIT", 2.0)
    before = migrated.token_cache_encrypted
    start = len(microsoft.requests)
    microsoft.graph_throttle, microsoft.graph_always_throttled = list(first), always
    assert sync_account(migrated.pk) == 0
    assert len(_graph_since(microsoft, start)) == tries
    account = MailAccount.objects.get(pk=migrated.pk)
    assert account.last_sync_error == "ms_unreachable" and account.token_cache_encrypted == before

    microsoft.graph_always_throttled = None
    microsoft.deliver(migrated.address, subject="danach")
    assert sync_account(migrated.pk) == 1


def test_a_graph_outage_during_verify_keeps_the_migration_and_its_tokens(client, user, ms_account, microsoft):
    migration = services.start_migration(user=user, account=ms_account)
    steps.run_migration(migration.pk)
    client.force_login(user)
    microsoft.graph_always_throttled = (503, "0")  # the worker's verify meets it, whatever it asks
    sign_in(client, microsoft, migration)
    assert steps.run_migration(migration.pk) == "verifying"
    waiting = Migration.objects.get(pk=migration.pk)
    assert waiting.status == "verifying" and waiting.error_code == "ms_unreachable"
    assert waiting.secret_encrypted  # the redeemed tokens, not the spent code
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "versucht es in einigen Minuten selbst erneut" in page
    codes = len([r for r in microsoft.requests if r["query"].get("grant_type") == "authorization_code"])

    microsoft.graph_always_throttled = None
    assert steps.run_migration(migration.pk) == "verifying"  # too early: its back-off has not passed
    Migration.objects.filter(pk=migration.pk).update(retry_at=waiting.retry_at - timedelta(hours=1))
    assert services.sweep_stuck_migrations() == [migration.pk]
    assert steps.run_migration(migration.pk) == "done"  # what the sweep's re-queue runs: no new sign-in
    assert len([r for r in microsoft.requests if r["query"].get("grant_type") == "authorization_code"]) == codes
    done = Migration.objects.get(pk=migration.pk)
    assert done.error_code == "" and MailAccount.objects.get(pk=ms_account.pk).engine == "v3"


def test_a_hybrid_mailbox_on_premises_is_sent_to_the_exchange_path(client, user, make_account, microsoft):
    microsoft.add_user("hybrid@contoso.com", microsoft.contoso, on_premises=True)
    account = make_account(user, "hybrid@contoso.com", provider_kind="microsoft")
    migration = services.start_migration(user=user, account=account)
    steps.run_migration(migration.pk)
    client.force_login(user)
    sign_in(client, microsoft, migration)
    assert steps.run_migration(migration.pk) == "failed"  # permanent: trying again here cannot help
    failed = Migration.objects.get(pk=migration.pk)
    assert failed.error_code == "ms_mailbox_on_premises"
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "Exchange-Server Ihres Unternehmens" in page and "„Microsoft Exchange“" in page
    with translation.override("en"):
        assert 'choose "Microsoft Exchange"' in str(errors.message_for("ms_mailbox_on_premises"))


def test_a_sync_of_a_mailbox_moved_on_premises_says_so(migrated, microsoft):
    microsoft.users[migrated.address].on_premises = True  # moved back to the company's Exchange server
    assert sync_account(migrated.pk) == 0
    account = MailAccount.objects.get(pk=migrated.pk)
    assert account.last_sync_error == "ms_mailbox_on_premises"  # not ms_protocol, and no folder marked gone
