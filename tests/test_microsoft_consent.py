"""Admin consent: the waiting state, the three ways on, and an untrusted callback."""

import re
import time
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import requests
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from migration import services, steps
from migration.microsoft import client as ms_client
from migration.microsoft import consent, tasks
from migration.models import AdminConsentRequest, Migration, MigrationEvent, TenantConsent
from tests.conftest import wait_for
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    FABRIKAM, browser_get, fake_microsoft_server, local, microsoft, ms_account, query_of, sign_in,
)


def _waiting(user, account) -> Migration:
    migration = services.start_migration(user=user, account=account)
    # With a live worker (celery_worker_thread) the published task may claim the step first: then this direct
    # run finds it taken, and the worker's run brings it to the same state.
    steps.run_migration(migration.pk)
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status == "awaiting_user")
    return Migration.objects.get(pk=migration.pk)


def _needing_consent(client, user, make_account, microsoft, address="lena@fabrikam.de") -> Migration:
    migration = _waiting(user, make_account(user, address, provider_kind="microsoft"))
    client.force_login(user)
    sign_in(client, microsoft, migration)
    migration.refresh_from_db()
    assert migration.status == "awaiting_admin_consent", migration.status
    return migration


def _admin_link(client, migration) -> str:
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    return re.search(r'value="([^"]+)" data-testid="admin-link"', page)[1].replace("&amp;", "&")


def _admin_goes_to_microsoft(fake, link) -> tuple[Client, str]:
    """The admin (no CRM login) opens the link and continues; returns their browser and Microsoft's answer."""
    admin = Client()
    page = admin.get(local(link))
    assert page.status_code == 200 and "Weiter zu Microsoft" in page.content.decode()
    response = admin.post(local(link))
    assert response.status_code == 302 and "/fabrikam.de/v2.0/adminconsent?" in response["Location"]
    return admin, browser_get(fake, response["Location"])


@pytest.mark.django_db
@pytest.mark.parametrize("setup", [
    pytest.param(dict(needs_admin_consent=90094), id="AADSTS90094-need-admin-approval"),
    pytest.param(dict(needs_admin_consent=90095), id="AADSTS90095-access-denied-after-approval-request"),
    pytest.param(dict(needs_admin_consent=65001, consent_error="invalid_client"), id="AADSTS65001-at-authorize"),
    pytest.param(dict(needs_admin_consent=65001, consent_error_at="token"), id="AADSTS65001-at-code-exchange"),
    pytest.param({"authorize_error": {"error": "consent_required", "error_description": "Consent required."}},
                 id="consent_required"),
])
def test_it_waits_for_admin_consent_and_shows_three_ways(client, user, make_account, microsoft, settings, setup):
    settings.MS_APP_DISPLAY_NAME = "Acme CRM Sync V3"
    settings.MS_LEGACY_APP_DISPLAY_NAME = "Acme CRM Sync (alt)"
    if "authorize_error" in setup:
        microsoft.fabrikam.needs_admin_consent = None
        microsoft.authorize_error = setup["authorize_error"]
    else:
        for key, value in setup.items():
            setattr(microsoft.fabrikam, key, value)
    migration = _waiting(user, make_account(user, "lena@fabrikam.de", provider_kind="microsoft"))
    client.force_login(user)
    sign_in(client, microsoft, migration)
    if setup.get("consent_error_at") == "token":
        assert Migration.objects.get(pk=migration.pk).status == "verifying"
        steps.run_migration(migration.pk)  # the worker meets the error at the code exchange
    migration.refresh_from_db()
    assert migration.status == "awaiting_admin_consent"
    assert migration.detected["tenant"] == "fabrikam.de" and migration.secret_encrypted == ""
    assert migration.account.engine == "v2"
    assert TenantConsent.objects.get(tenant="fabrikam.de").status == "requested"
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "Administratorgenehmigung erforderlich" in page
    assert "Mit Administratorkonto anmelden" in page
    assert "/migration/microsoft/admin/" in _admin_link(client, migration)
    assert "entra.microsoft.com" in page and "Acme CRM Sync V3" in page and "Acme CRM Sync (alt)" in page


@pytest.mark.django_db
def test_it_keeps_the_sign_in_when_the_user_cancels(client, user, ms_account, microsoft):
    migration = _waiting(user, ms_account)
    client.force_login(user)
    microsoft.authorize_error = {"error": "access_denied", "error_subcode": "cancel",
                                 "error_description": "AADSTS65004: User declined to consent to access the app."}
    response, _, _ = sign_in(client, microsoft, migration)
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"
    assert "Zustimmung abgelehnt" in client.get(response["Location"]).content.decode()


@pytest.mark.django_db(transaction=True)
def test_it_resumes_every_waiting_migration_of_the_tenant_after_admin_consent(
    client, user, other_user, make_account, microsoft, celery_worker_thread, mailoutbox
):
    microsoft.add_tenant("c0ffee00-0000-4000-8000-000000000003", {"northwind.example"}, needs_admin_consent=90094)
    microsoft.add_user("nora@northwind.example", microsoft.tenants["c0ffee00-0000-4000-8000-000000000003"])
    lena = _needing_consent(client, user, make_account, microsoft)
    nora = _needing_consent(client, user, make_account, microsoft, "nora@northwind.example")
    other = Client()
    otto = _needing_consent(other, other_user, make_account, microsoft, "otto@fabrikam.de")

    admin, answer = _admin_goes_to_microsoft(microsoft, _admin_link(client, lena))
    assert query_of(answer)["admin_consent"] == "True"
    result = admin.get(local(answer))
    assert result.status_code == 200 and "Ihre Antwort ist eingegangen" in result.content.decode()

    for migration in (lena, otto):
        migration.refresh_from_db()
        assert migration.status == "awaiting_user" and migration.detected["consent_reported"] is True
    assert Migration.objects.get(pk=nora.pk).status == "awaiting_admin_consent"  # another tenant
    tenant = TenantConsent.objects.get(tenant="fabrikam.de")
    # The callback is no proof: reported, not granted, until a user's sign-in shows it.
    assert tenant.status == "reported" and tenant.tenant_id == FABRIKAM and tenant.reported_at and not tenant.granted_at
    wait_for(lambda: len(mailoutbox) == 2)
    assert {m.to[0] for m in mailoutbox} == {user.email, other_user.email}
    assert all(m.subject == "Ihr Administrator hat geantwortet – jetzt anmelden" for m in mailoutbox)
    assert any(reverse("migration-detail", args=[lena.pk]) in m.body for m in mailoutbox)

    page = client.get(reverse("migration-detail", args=[lena.pk])).content.decode()
    assert "Ihr Administrator hat geantwortet – jetzt anmelden" in page and "data-auto-continue" in page
    sign_in(client, microsoft, lena)  # one click (a page left open does it by itself)
    wait_for(lambda: Migration.objects.get(pk=lena.pk).status == "done")
    tenant.refresh_from_db()
    assert tenant.status == "granted" and tenant.granted_at and tenant.blocked_at is None  # Microsoft proved it


@pytest.mark.django_db
def test_the_admin_can_consent_from_the_users_own_browser(client, user, make_account, microsoft):
    migration = _needing_consent(client, user, make_account, microsoft)
    response = client.post(reverse("microsoft-admin-consent", args=[migration.pk]))
    sent = query_of(response["Location"])
    assert "/fabrikam.de/v2.0/adminconsent" in response["Location"]
    assert sent["redirect_uri"].endswith("/migration/microsoft/admin-callback/") and "Mail.Read" in sent["scope"]
    back = client.get(local(browser_get(microsoft, response["Location"])))
    assert back["Location"] == reverse("migration-detail", args=[migration.pk])
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"


@pytest.mark.django_db
def test_it_changes_nothing_when_the_admin_declines(client, user, make_account, microsoft, mailoutbox):
    migration = _needing_consent(client, user, make_account, microsoft)
    microsoft.admin_consent_answer = "decline"
    admin, answer = _admin_goes_to_microsoft(microsoft, _admin_link(client, migration))
    result = admin.get(local(answer))
    assert result.status_code == 200 and "nicht erteilt" in result.content.decode()
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"
    assert TenantConsent.objects.get(tenant="fabrikam.de").status == "requested"
    assert mailoutbox == []


@pytest.mark.django_db
def test_it_ignores_forged_admin_consent_callbacks(client, user, make_account, microsoft):
    migration = _needing_consent(client, user, make_account, microsoft)
    link = _admin_link(client, migration)
    callback = reverse("microsoft-admin-callback")

    # Made up from scratch.
    stranger = Client()
    made_up = stranger.get(callback, {"admin_consent": "True", "tenant": FABRIKAM, "state": "guessed"})
    assert made_up.status_code == 400 and "ungültig" in made_up.content.decode()
    # A genuine state, but in another browser than the one the portal sent to Microsoft.
    admin, answer = _admin_goes_to_microsoft(microsoft, link)
    assert stranger.get(local(answer)).status_code == 400
    # The genuine browser, but Microsoft never granted anything: no token, no consent.
    microsoft.fabrikam.admin_consented = microsoft.fabrikam.service_principal = False
    unproven = admin.get(callback, {"admin_consent": "True", "tenant": FABRIKAM, "state": query_of(answer)["state"]})
    assert unproven.status_code == 200 and "nicht bestätigt" in unproven.content.decode()
    # Replaying a spent state.
    assert admin.get(local(answer)).status_code == 400

    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"
    assert TenantConsent.objects.get(tenant="fabrikam.de").status == "requested"


@pytest.mark.django_db
def test_it_takes_the_tenant_from_its_own_request_not_from_the_callback(client, user, make_account, microsoft):
    microsoft.add_tenant("c0ffee00-0000-4000-8000-000000000003", {"northwind.example"}, needs_admin_consent=90094)
    microsoft.add_user("nora@northwind.example", microsoft.tenants["c0ffee00-0000-4000-8000-000000000003"])
    lena = _needing_consent(client, user, make_account, microsoft)
    nora = _needing_consent(client, user, make_account, microsoft, "nora@northwind.example")
    admin, answer = _admin_goes_to_microsoft(microsoft, _admin_link(client, lena))
    lying = {**query_of(answer), "tenant": "c0ffee00-0000-4000-8000-000000000003"}
    assert admin.get(reverse("microsoft-admin-callback"), lying).status_code == 200
    assert Migration.objects.get(pk=lena.pk).status == "awaiting_user"
    assert Migration.objects.get(pk=nora.pk).status == "awaiting_admin_consent"
    assert not TenantConsent.objects.filter(tenant="northwind.example", status="granted").exists()


@pytest.mark.django_db
def test_it_refuses_tampered_and_expired_admin_links(client, user, make_account, microsoft, monkeypatch, settings):
    migration = _needing_consent(client, user, make_account, microsoft)
    link = _admin_link(client, migration)
    anonymous = Client()
    tampered = local(link).replace("/admin/", "/admin/x")
    assert anonymous.get(tampered).status_code == 410
    settings.MS_ADMIN_LINK_DAYS = 1
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 2 * 86400)
    old = consent.make_admin_link(tenant="fabrikam.de", migration_id=migration.pk)
    monkeypatch.setattr(time, "time", real_time)
    response = anonymous.get(local(old))
    assert response.status_code == 410 and "abgelaufen" in response.content.decode()
    assert anonymous.post(local(old)).status_code == 410
    assert not AdminConsentRequest.objects.exists()  # the link alone starts nothing


@pytest.mark.django_db
def test_the_user_can_mail_the_link_to_themselves_to_forward_it(client, user, make_account, microsoft, mailoutbox):
    migration = _needing_consent(client, user, make_account, microsoft)
    url = reverse("microsoft-send-admin-link", args=[migration.pk])
    # Whatever address the request names, the link only goes to the user's own (the address of their login).
    response = client.post(url, {"email": "victim@example.org"}, follow=True)
    assert [m.to for m in mailoutbox] == [[user.email]]
    assert "/migration/microsoft/admin/" in mailoutbox[0].body and "lena@fabrikam.de" in mailoutbox[0].body
    assert f"an {user.email} gesendet" in response.content.decode()
    tenant = TenantConsent.objects.get(tenant="fabrikam.de")
    assert tenant.admin_email == "" and tenant.last_link_sent_at


@pytest.mark.django_db
def test_admin_link_mails_are_limited_per_user_and_per_tenant(
    client, user, other_user, make_account, microsoft, mailoutbox, monkeypatch
):
    lena = _needing_consent(client, user, make_account, microsoft)
    for _ in range(consent.LINK_MAILS_PER_USER + 2):
        client.post(reverse("microsoft-send-admin-link", args=[lena.pk]))
    assert len(mailoutbox) == consent.LINK_MAILS_PER_USER
    page = client.get(reverse("migration-detail", args=[lena.pk])).content.decode()
    assert "schon mehrere Links erhalten" in page
    # Another user of the tenant: their own budget, but the tenant's is shared.
    monkeypatch.setattr(consent, "LINK_MAILS_PER_TENANT", consent.LINK_MAILS_PER_USER + 1)
    other = Client()
    otto = _needing_consent(other, other_user, make_account, microsoft, "otto@fabrikam.de")
    for _ in range(3):
        other.post(reverse("microsoft-send-admin-link", args=[otto.pk]))
    assert [m.to for m in mailoutbox].count([other_user.email]) == 1


@pytest.mark.django_db
def test_staff_resend_the_admin_link_from_the_admin(client, admin_client, user, make_account, microsoft, mailoutbox):
    _needing_consent(client, user, make_account, microsoft)
    tenant = TenantConsent.objects.get(tenant="fabrikam.de")
    changelist = reverse("admin:migration_tenantconsent_changelist")
    page = admin_client.get(changelist).content.decode()
    assert "fabrikam.de" in page and "Angefragt" in page
    admin_client.post(changelist, {"action": "resend_admin_link", "_selected_action": [tenant.pk]})
    assert [m.to for m in mailoutbox] == [[user.email]]  # no admin address known: the waiting user forwards it
    TenantConsent.objects.filter(pk=tenant.pk).update(admin_email="it@fabrikam.de")
    admin_client.post(changelist, {"action": "resend_admin_link", "_selected_action": [tenant.pk]})
    assert mailoutbox[-1].to == ["it@fabrikam.de"]
    assert TenantConsent.objects.get(pk=tenant.pk).last_link_sent_at is not None
    assert mail.outbox is mailoutbox


def _links_in(message) -> list[dict]:
    """The admin links in an e-mail, read back: {"t": tenant, "m": migration id}."""
    tokens = re.findall(r"/migration/microsoft/admin/([^/\s]+)/", message.body)
    return [consent.read_admin_link(token) for token in tokens]


@pytest.mark.django_db
def test_staff_resend_one_message_per_waiting_user_each_with_its_own_link(
    client, admin_client, user, other_user, make_account, microsoft, mailoutbox
):
    lena = _needing_consent(client, user, make_account, microsoft)
    otto = _needing_consent(Client(), other_user, make_account, microsoft, "otto@fabrikam.de")
    tenant = TenantConsent.objects.get(tenant="fabrikam.de")
    changelist = reverse("admin:migration_tenantconsent_changelist")
    admin_client.post(changelist, {"action": "resend_admin_link", "_selected_action": [tenant.pk]})

    # Nobody sees the other's address, and each link names the mailbox it was asked for.
    assert sorted(m.to for m in mailoutbox) == sorted([[user.email], [other_user.email]])
    by_recipient = {m.to[0]: m for m in mailoutbox}
    for owner, migration, other in ((user, lena, otto), (other_user, otto, lena)):
        message = by_recipient[owner.email]
        assert message.cc == [] and message.bcc == []
        assert _links_in(message) == [{"t": "fabrikam.de", "m": migration.pk}]
        assert migration.account.address in message.body and other.account.address not in message.body

    # An admin address known: one message for the tenant, naming no single requester.
    mailoutbox.clear()
    TenantConsent.objects.filter(pk=tenant.pk).update(admin_email="it@fabrikam.de")
    admin_client.post(changelist, {"action": "resend_admin_link", "_selected_action": [tenant.pk]})
    assert [m.to for m in mailoutbox] == [["it@fabrikam.de"]]
    assert _links_in(mailoutbox[0]) == [{"t": "fabrikam.de", "m": None}]
    assert "lena@fabrikam.de" not in mailoutbox[0].body and "otto@fabrikam.de" not in mailoutbox[0].body


@pytest.mark.django_db
def test_signing_in_again_without_consent_says_the_consent_is_still_missing(client, user, make_account, microsoft):
    migration = _needing_consent(client, user, make_account, microsoft)
    events = list(MigrationEvent.objects.filter(migration=migration).values_list("pk", flat=True))

    # "Erneut bei Microsoft anmelden" on the waiting page, before any admin consented.
    response, _, _ = sign_in(client, microsoft, migration)
    page = client.get(response["Location"]).content.decode()
    assert "noch nicht erteilt" in page and "in einem anderen Schritt" not in page
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"
    assert list(MigrationEvent.objects.filter(migration=migration).values_list("pk", flat=True)) == events
    assert TenantConsent.objects.get(tenant="fabrikam.de").status == "requested"


def test_it_keeps_the_tenant_in_one_path_segment_of_the_admin_consent_url(microsoft):
    url = ms_client.admin_consent_url(tenant="fabrikam.de/../common?client_id=evil#", state="s1")
    assert urlsplit(url).path == "/fabrikam.de%2F..%2Fcommon%3Fclient_id%3Devil%23/v2.0/adminconsent"
    assert query_of(url)["client_id"] == microsoft.client_id and query_of(url)["state"] == "s1"
    # Microsoft sees one unknown tenant, not the consent page of "common".
    answer = requests.get(url, verify=str(microsoft.cert_path), allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and "Tenant not found" in answer.text


# --- consent granted by hand in the Entra admin center -------------------------------------


def test_the_beat_polls_for_admin_consent(settings):
    from portal.celery import app

    app.loader.import_default_modules()
    entry = next(e for e in app.conf.beat_schedule.values()
                 if e["task"] == "migration.microsoft.tasks.poll_admin_consents")
    assert entry["schedule"] == float(settings.MS_CONSENT_POLL_SECONDS) == 300.0
    assert entry["options"]["expires"] == entry["schedule"]  # no backlog of polls after an outage


@pytest.mark.django_db
def test_the_poll_changes_nothing_while_no_admin_has_consented(client, user, make_account, microsoft, mailoutbox):
    migration = _needing_consent(client, user, make_account, microsoft)
    events = MigrationEvent.objects.filter(migration=migration).count()
    assert tasks.poll_admin_consents() == 0
    # It asked Microsoft (a client-credentials token for the tenant), and was refused.
    asked = [r for r in microsoft.seen("/fabrikam.de/oauth2/v2.0/token")
             if r["query"].get("grant_type") == "client_credentials"]
    assert len(asked) == 1
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"
    assert MigrationEvent.objects.filter(migration=migration).count() == events
    assert TenantConsent.objects.get(tenant="fabrikam.de").status == "requested"
    assert mailoutbox == []


@pytest.mark.django_db
def test_a_second_beats_poll_in_the_same_interval_asks_microsoft_nothing(client, user, make_account, microsoft,
                                                                          settings):
    _needing_consent(client, user, make_account, microsoft)

    def asked():
        return len([r for r in microsoft.seen("/fabrikam.de/oauth2/v2.0/token")
                    if r["query"].get("grant_type") == "client_credentials"])

    assert tasks.poll_admin_consents() == 0 and asked() == 1
    # The other beat's poll runs in another worker process: msal's memory of the refused request is not there.
    ms_client.HTTP_CACHE.clear()
    assert tasks.poll_admin_consents() == 0 and asked() == 1  # claimed for this interval: one request per tenant
    TenantConsent.objects.update(polled_at=timezone.now() - timedelta(seconds=settings.MS_CONSENT_POLL_SECONDS))
    ms_client.HTTP_CACHE.clear()
    assert tasks.poll_admin_consents() == 0 and asked() == 2  # the next interval


@pytest.mark.django_db(transaction=True)
def test_the_poll_resumes_migrations_after_consent_granted_in_entra(
    client, user, make_account, microsoft, celery_worker_thread, mailoutbox
):
    lena = _needing_consent(client, user, make_account, microsoft)
    microsoft.add_tenant("c0ffee00-0000-4000-8000-000000000003", {"northwind.example"}, needs_admin_consent=90094)
    microsoft.add_user("nora@northwind.example", microsoft.tenants["c0ffee00-0000-4000-8000-000000000003"])
    nora = _needing_consent(client, user, make_account, microsoft, "nora@northwind.example")

    microsoft.grant_consent_in_entra(microsoft.fabrikam)  # by hand: no redirect, no callback
    tasks.poll_admin_consents.delay()  # what the beat sends

    wait_for(lambda: Migration.objects.get(pk=lena.pk).status == "awaiting_user")
    lena.refresh_from_db()
    assert lena.detected["consent_reported"] is True
    assert TenantConsent.objects.get(tenant="fabrikam.de").status == "reported"
    assert Migration.objects.get(pk=nora.pk).status == "awaiting_admin_consent"  # its admin did nothing
    wait_for(lambda: len(mailoutbox) == 1)
    assert mailoutbox[0].to == [user.email]
    assert mailoutbox[0].subject == "Ihr Administrator hat geantwortet – jetzt anmelden"
    page = client.get(reverse("migration-detail", args=[lena.pk])).content.decode()
    assert "Ihr Administrator hat geantwortet – jetzt anmelden" in page and "data-auto-continue" in page
    sign_in(client, microsoft, lena)
    wait_for(lambda: Migration.objects.get(pk=lena.pk).status == "done")


@pytest.mark.django_db
def test_the_poll_leaves_a_tenant_alone_whose_consent_went_missing_again(
    client, user, make_account, microsoft, mailoutbox
):
    # Consented once (through the link), then the admin removed the app's permissions:
    # its service principal stays, so a token no longer proves the consent.
    migration = _needing_consent(client, user, make_account, microsoft)
    admin, answer = _admin_goes_to_microsoft(microsoft, _admin_link(client, migration))
    admin.get(local(answer))
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"
    microsoft.remove_permissions_in_entra(microsoft.fabrikam)
    sign_in(client, microsoft, Migration.objects.get(pk=migration.pk))
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"

    assert tasks.poll_admin_consents() == 0  # else: resume, sign-in refused, wait, resume ... every few minutes
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"
    assert mailoutbox == []


@pytest.mark.django_db
def test_it_tells_each_user_once_even_when_the_task_is_redelivered(client, user, make_account, microsoft, mailoutbox):
    migration = _needing_consent(client, user, make_account, microsoft)
    admin, answer = _admin_goes_to_microsoft(microsoft, _admin_link(client, migration))
    admin.get(local(answer))

    assert tasks.notify_consent_granted(migration.pk) is True
    assert tasks.notify_consent_granted(migration.pk) is False  # acks_late: the same task again after a crash
    assert len(mailoutbox) == 1

    # Asked again later and granted again: that is news, told once more.
    microsoft.remove_permissions_in_entra(microsoft.fabrikam)
    sign_in(client, microsoft, Migration.objects.get(pk=migration.pk))
    admin, answer = _admin_goes_to_microsoft(microsoft, _admin_link(client, migration))
    admin.get(local(answer))
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"
    tasks.notify_consent_granted(migration.pk)
    tasks.notify_consent_granted(migration.pk)
    assert len(mailoutbox) == 2
