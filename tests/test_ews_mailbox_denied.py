"""A login that Exchange accepts but that may not open the mailbox (ErrorAccessDenied, ErrorNonExistentMailbox):
every page that shows the error says exactly that, in German and in English, never a generic failure or
"wrong password" (issue 9). Against the fake EWS endpoint."""

import pytest
from django.urls import reverse

from migration import services, steps
from migration.models import Migration
from migration.selectors import current_campaign
from sync.exchange import client as ews
from sync.models import AccountStatus, MailAccount, SyncedMessage
from sync.runs import sync_account
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews  # noqa: F401

pytestmark = pytest.mark.django_db
GERMAN = "darf das Postfach nicht öffnen"  # "dieser Benutzer …" (migration) or "dieses Konto …" (message page)
ENGLISH = "may not open the mailbox"
GENERIC = ("Die Migration ist fehlgeschlagen", "Der Inhalt dieser Nachricht konnte nicht geladen werden",
           "Exchange hat die Anmeldung abgelehnt")


@pytest.fixture
def ews_account(make_account, user, fake_ews):
    """A V3 Exchange account whose login may no longer open the mailbox."""
    account = make_account(user, "anna@firma.test", provider_kind="exchange", engine="v3")
    server = ews.EwsSettings(url=fake_ews.url, username=EWS_USER, address=account.address, auth_type="basic",
                             ca_pem=fake_ews.cert_pem)
    ews.apply_to_account(account, server=server, password=EWS_PASSWORD)
    account.save()
    fake_ews.mailbox_refusal = "ErrorAccessDenied"
    return account


def _says_it(page: str, text: str = GERMAN) -> bool:
    return text in page and not any(generic in page for generic in GENERIC)


@pytest.mark.parametrize("refusal", ["ErrorAccessDenied", "ErrorNonExistentMailbox"])
def test_the_migration_page_says_the_login_may_not_open_the_mailbox(client, user, make_account, fake_ews, refusal):
    account = make_account(user, "anna@firma.test", provider_kind="exchange", username="anna")
    migration = services.start_migration(user=user, account=account)
    steps.run_migration(migration.pk)
    connection = {"ews_url": fake_ews.url, "username": EWS_USER, "auth_type": "basic", "ca_pem": fake_ews.cert_pem}
    services.submit_credentials(migration=Migration.objects.get(pk=migration.pk), connection=connection,
                                password=EWS_PASSWORD, actor="test")
    fake_ews.mailbox_refusal = refusal
    assert steps.run_migration(migration.pk) == "failed"
    assert Migration.objects.get(pk=migration.pk).error_code == "ews_mailbox_denied"
    client.force_login(user)
    url = reverse("migration-detail", args=[migration.pk])
    assert _says_it(client.get(url).content.decode())
    assert ENGLISH in client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()


def test_the_settings_page_says_it_for_a_v3_account(signed_in, ews_account):
    sync_account(ews_account.pk)
    account = MailAccount.objects.get(pk=ews_account.pk)
    assert (account.status, account.last_sync_error) == (AccountStatus.ERROR, "ews_mailbox_denied")
    assert _says_it(signed_in.get(reverse("settings-mail")).content.decode())
    assert ENGLISH in signed_in.get(reverse("settings-mail"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    # No "enter a new password": the password is right, and asking would only lock the Windows account.
    assert reverse("account-new-password", args=[account.pk]) not in signed_in.get(reverse("settings-mail")).content.decode()


def test_the_new_password_page_says_it_when_the_new_password_led_there(signed_in, ews_account, fake_ews):
    # The user re-entered the password after a refusal; the account is waiting for a re-connect again.
    MailAccount.objects.filter(pk=ews_account.pk).update(status=AccountStatus.RECONNECT,
                                                          last_sync_error="ews_mailbox_denied")
    page = signed_in.get(reverse("account-new-password", args=[ews_account.pk])).content.decode()
    assert _says_it(page)


def test_the_message_page_says_it(signed_in, ews_account, fake_ews):
    item = fake_ews.deliver("inbox", subject="Gesperrt")
    message = SyncedMessage.objects.create(
        account=ews_account, dedup_key=item["message_id"].strip("<>"), message_id=item["message_id"], folder="INBOX",
        subject=item["subject"], received_at=item["received"], provider_id=item["id"], imported_by="v3")
    page = signed_in.get(reverse("message-detail", args=[message.pk])).content.decode()
    assert "darf das Postfach nicht öffnen" in page and "konnte nicht geladen werden" not in page


def test_the_admin_shows_the_text_for_accounts_and_migrations(admin_client, user, ews_account, make_account, fake_ews):
    sync_account(ews_account.pk)
    changelist = admin_client.get(reverse("admin:sync_mailaccount_changelist")).content.decode()
    assert GERMAN in changelist
    change = admin_client.get(reverse("admin:sync_mailaccount_change", args=[ews_account.pk])).content.decode()
    assert GERMAN in change
    other = make_account(user, "bernd@firma.test", provider_kind="exchange")
    migration = Migration.objects.create(account=other, user=user, provider_kind="exchange", status="failed",
                                         error_code="ews_mailbox_denied", campaign=current_campaign())
    page = admin_client.get(reverse("admin:migration_migration_change", args=[migration.pk])).content.decode()
    assert GERMAN in page
