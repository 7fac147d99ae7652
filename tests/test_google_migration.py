"""A Google mailbox migrates end to end: the picker, Sign in with Google (fake Google over HTTPS),
the worker (a real Celery worker) verifying over IMAP with XOAUTH2 against a real Dovecot that checks
each token at the fake Google's tokeninfo endpoint, the handoff, and the V3 sync: mail before, during
and after the switch arrives exactly once. A revoked grant puts the account into "Neu verbinden";
a Workspace whose admin restricts the app is explained with a link for the admin."""

from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings
from django.urls import reverse

from migration.models import Migration, MigrationEvent
from migration.selectors import current_campaign
from portal.devservers import make_message
from sync import crypto
from sync.models import FolderState, MailAccount, SyncedMessage
from sync.runs import sync_account
from tests.conftest import wait_for
from tests.fakes.google_fixtures import fake_google_server, gmail, gmail_dovecot, google  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def gmail_account(gmail, user, make_account):
    """A V2 account of `user` on the Dovecot standing in for Gmail (V2 logged in with a password),
    whose address is also a user of the fake Google."""
    fake, dovecot = gmail
    address, password = dovecot.take_mailbox()
    fake.add_user(address)
    return make_account(user, address, imap_host="127.0.0.1", imap_port=dovecot.tls_port, imap_security="ssl",
                        username=address, secret_encrypted=crypto.encrypt_json({"password": password}))


def _migration(account, kind="google") -> Migration:
    """A migration waiting in the login step (as after detection)."""
    return Migration.objects.create(account=account, user=account.owner, campaign=current_campaign(),
                                    provider_kind=kind, status="awaiting_user")


def _start(client, account) -> Migration:
    assert client.post(reverse("migration-start", args=[account.pk])).status_code == 302
    migration = Migration.objects.get(account=account)
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status == "awaiting_user")
    return Migration.objects.get(pk=migration.pk)


def _via_google(client, start_response):
    """What the browser does: follow the redirect to Google, and Google's redirect back to the callback."""
    assert start_response.status_code == 302
    google_url = start_response["Location"]
    cert = settings.GOOGLE_CA_FILE
    back = requests.get(google_url, verify=cert, allow_redirects=False, timeout=5)
    assert back.status_code == 302, back.text
    parts = urlsplit(back.headers["Location"])
    assert parts.path == reverse("google-callback")
    return client.get(f"{parts.path}?{parts.query}")


def _sign_in(client, migration):
    return _via_google(client, client.post(reverse("google-sign-in", args=[migration.pk])))


def _finished(migration):
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status in ("done", "failed"))
    return Migration.objects.get(pk=migration.pk)


def test_the_picker_offers_google_first_and_says_when_it_is_not_set_up(client, user, make_account, settings):
    account = make_account(user, "anna@firma.test", imap_host="imap.firma.test")
    migration = _migration(account, "imap")
    client.force_login(user)
    settings.GOOGLE_CLIENT_ID = settings.GOOGLE_CLIENT_SECRET = ""
    page = client.get(reverse("migration-picker", args=[migration.pk])).content.decode()
    assert page.index("Google (Gmail, Google Workspace)") < page.index("Weiter mit Microsoft")
    assert "Die Anmeldung mit Google ist in diesem Portal noch nicht eingerichtet" in page
    assert 'value="google_signin"><button type="submit" class="button primary" disabled' in page
    settings.GOOGLE_CLIENT_ID, settings.GOOGLE_CLIENT_SECRET = "id", "secret"
    page = client.get(reverse("migration-picker", args=[migration.pk])).content.decode()
    assert 'value="google_signin"><button type="submit" class="button primary">' in page
    assert "noch nicht eingerichtet" not in page.split("Weiter mit Microsoft")[0]


def test_a_google_mailbox_migrates_and_every_message_arrives_exactly_once(
    client, user, gmail, gmail_account, celery_worker_thread
):
    fake, dovecot = gmail
    address = gmail_account.address
    old = datetime.now(timezone.utc) - timedelta(days=3)
    dovecot.deliver(address, make_message(subject="vorher 1", date=old), make_message(subject="vorher 2", date=old))
    assert sync_account(gmail_account.pk) == 2  # V2 imported these
    dovecot.deliver(address, make_message(subject="zwischen V2-Abruf und Wechsel"))
    dovecot.deliver(address, make_message(subject="im Archiv"), folder="Archiv")

    client.force_login(user)
    migration = _start(client, gmail_account)
    client.post(reverse("migration-choose", args=[migration.pk]), {"provider": "google_signin"})
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert 'data-testid="google-sign-in"' in page and "Bei Google anmelden" in page
    dovecot.deliver(address, make_message(subject="während"))  # during the migration, before the handoff
    assert _sign_in(client, migration).status_code == 302
    migration = _finished(migration)
    assert migration.status == "done", migration.error_code
    assert migration.secret_encrypted == ""

    account = MailAccount.objects.get(pk=gmail_account.pk)
    assert (account.engine, account.provider_kind, account.secret_encrypted) == ("v3", "google", "")
    grant = crypto.decrypt_json(account.token_cache_encrypted)
    assert grant["kind"] == "google" and grant["refresh_token"] in fake.refresh_tokens
    assert fake.tokeninfo_checks >= 1  # Dovecot asked Google about the verify's token

    dovecot.deliver(address, make_message(subject="danach"))
    wait_for(lambda: SyncedMessage.objects.filter(account=account, subject="während").exists())
    wait_for(lambda: MailAccount.objects.get(pk=account.pk).sync_lease_token == "")
    sync_account(account.pk)
    sync_account(account.pk)  # a second run must not duplicate anything
    assert fake.tokeninfo_checks >= 3  # and about the token of each V3 run
    subjects = sorted(SyncedMessage.objects.filter(account=account).values_list("subject", flat=True))
    assert subjects == sorted(["vorher 1", "vorher 2", "zwischen V2-Abruf und Wechsel", "im Archiv", "während",
                               "danach"])
    assert SyncedMessage.objects.get(subject="danach").imported_by == "v3"
    assert set(FolderState.objects.filter(account=account).values_list("name", flat=True)) >= {"INBOX", "Archiv"}
    statuses = list(MigrationEvent.objects.filter(migration=migration).values_list("to_status", flat=True))
    assert statuses == ["pending", "detecting", "awaiting_user", "awaiting_user", "verifying", "handing_over",
                        "done"]
    assert MailAccount.objects.get(pk=account.pk).status == "active"


def _v3_google_account(gmail, gmail_account, client, user):
    """Migrate gmail_account (no worker: the steps run inline) and return it, on V3."""
    from migration import steps

    client.force_login(user)
    migration = _migration(gmail_account)
    assert _sign_in(client, migration).status_code == 302
    steps.run_migration(migration.pk)
    assert Migration.objects.get(pk=migration.pk).status == "done"
    return MailAccount.objects.get(pk=gmail_account.pk)


def _expire_access_token(account):
    grant = crypto.decrypt_json(account.token_cache_encrypted)
    MailAccount.objects.filter(pk=account.pk).update(
        token_cache_encrypted=crypto.encrypt_json({**grant, "expires_at": 0}))


def test_a_revoked_grant_puts_the_account_into_reconnect_and_signing_in_again_resumes(
    client, user, gmail, gmail_account, settings
):
    fake, dovecot = gmail
    settings.CELERY_TASK_ALWAYS_EAGER = False
    account = _v3_google_account(gmail, gmail_account, client, user)
    dovecot.deliver(account.address, make_message(subject="eins"))
    assert sync_account(account.pk) == 1

    fake.revoke(account.address)
    _expire_access_token(account)  # the next run must refresh: Google answers invalid_grant
    dovecot.deliver(account.address, make_message(subject="zwei"))
    assert sync_account(account.pk) == 0
    account.refresh_from_db()
    assert (account.status, account.last_sync_error) == ("reconnect", "google_reconnect")
    page = client.get(reverse("settings-mail")).content.decode()
    assert reverse("google-reconnect", args=[account.pk]) in page

    assert _via_google(client, client.post(reverse("google-reconnect", args=[account.pk]))).status_code == 302
    account.refresh_from_db()
    assert (account.status, account.last_sync_error) == ("active", "")
    wait_for(lambda: MailAccount.objects.get(pk=account.pk).sync_lease_token == "")
    sync_account(account.pk)
    assert sorted(SyncedMessage.objects.filter(account=account).values_list("subject", flat=True)) == ["eins", "zwei"]


def test_a_workspace_whose_admin_restricts_the_app_is_explained_with_a_link_for_the_admin(
    client, user, gmail, gmail_account
):
    fake, _dovecot = gmail
    fake.admin_restricted.add(gmail_account.address.rpartition("@")[2])
    client.force_login(user)
    migration = _migration(gmail_account)
    assert _sign_in(client, migration).status_code == 302
    migration.refresh_from_db()
    assert (migration.status, migration.error_code) == ("awaiting_user", "google_admin_policy")
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "Google-Workspace-Verwaltung erlaubt dem CRM den Zugriff" in page
    assert 'href="https://support.google.com/a/answer/7281227"' in page
    assert MailAccount.objects.get(pk=gmail_account.pk).engine == "v2"


def test_signing_in_as_another_google_account_is_refused_on_the_migration_page(client, user, gmail, gmail_account):
    fake, _dovecot = gmail
    fake.add_user("someone-else@gmail.com")
    fake.signs_in_as = "someone-else@gmail.com"
    client.force_login(user)
    migration = _migration(gmail_account)
    _sign_in(client, migration)
    migration.refresh_from_db()
    assert (migration.status, migration.error_code, migration.secret_encrypted) == ("awaiting_user",
                                                                                     "google_wrong_account", "")
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "mit einem anderen Konto angemeldet" in page


def test_personal_gmail_keeps_the_app_password_route_with_its_hint(user, make_account, settings, google):
    from migration import proposal

    account = make_account(user, "anna@gmail.com")
    kind, detected = proposal.initial(account)
    assert kind == "google"  # Google is set up: Sign in with Google
    settings.GOOGLE_CLIENT_ID = ""
    kind, detected = proposal.initial(account)
    assert kind == "imap" and detected["host"] == "imap.gmail.com"
    assert any("App-Passwort" in str(hint) for hint in detected["hints"])
    from migration.mask import CHOICES_BY_KEY

    assert CHOICES_BY_KEY["google"].kind == "imap" and "App-Passwort" in str(CHOICES_BY_KEY["google"].label)


def test_a_token_gmail_refuses_mid_life_also_asks_for_a_google_reconnect(client, user, gmail, gmail_account):
    fake, dovecot = gmail
    account = _v3_google_account(gmail, gmail_account, client, user)
    fake.revoke(account.address)  # the access token is still "fresh" for the portal; Dovecot asks Google: unknown
    assert sync_account(account.pk) == 0
    account.refresh_from_db()
    assert (account.status, account.last_sync_error) == ("reconnect", "google_reconnect")


def test_an_admin_who_restricts_the_app_later_puts_the_account_into_reconnect_with_the_steps(
    client, user, gmail, gmail_account
):
    fake, _dovecot = gmail
    account = _v3_google_account(gmail, gmail_account, client, user)
    fake.admin_restricted.add(account.address.rpartition("@")[2])
    _expire_access_token(account)  # the refresh meets admin_policy_enforced
    assert sync_account(account.pk) == 0
    account.refresh_from_db()
    assert (account.status, account.last_sync_error) == ("reconnect", "google_admin_policy")
    page = client.get(reverse("settings-mail")).content.decode()
    assert "Google-Workspace-Verwaltung erlaubt dem CRM den Zugriff" in page
    assert 'href="https://support.google.com/a/answer/7281227"' in page
    assert reverse("google-reconnect", args=[account.pk]) in page


def test_a_verify_while_google_is_unreachable_waits_and_keeps_the_grant(client, user, gmail, gmail_account, settings):
    from migration import steps
    from portal.devservers import free_port

    client.force_login(user)
    migration = _migration(gmail_account)
    _sign_in(client, migration)
    migration.refresh_from_db()
    secret = crypto.decrypt_json(migration.secret_encrypted)
    Migration.objects.filter(pk=migration.pk).update(secret_encrypted=crypto.encrypt_json(
        {"grant": {**secret["grant"], "expires_at": 0}}))  # the worker must refresh first
    settings.GOOGLE_TOKEN_URL = f"https://127.0.0.1:{free_port()}/token"  # nobody listens
    assert steps.run_migration(migration.pk) == "verifying"
    migration.refresh_from_db()
    assert (migration.status, migration.error_code, migration.step_attempts) == ("verifying", "google_unreachable", 1)
    assert crypto.decrypt_json(migration.secret_encrypted)["grant"]["refresh_token"] == secret["grant"]["refresh_token"]
    assert MailAccount.objects.get(pk=gmail_account.pk).engine == "v2"
