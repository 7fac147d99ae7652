"""A V3 mailbox that refuses the stored password: one attempt, then the sync waits for the user."""

import pytest
from django.urls import reverse

from sync import crypto
from sync.models import MailAccount
from sync.selectors import accounts_due_for_sync
from sync.runs import sync_account
from tests.fakes.fixtures import EWS_USER, fake_ews, no_connections  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def v3_account(make_account, user, dovecot, mailbox, mail_settings):
    address, password = mailbox
    return make_account(user, address, engine="v3", imap_host="127.0.0.1", imap_port=dovecot.tls_port,
                        imap_security="ssl", username=address, secret_encrypted=crypto.encrypt_json({"password": password}))


def test_a_changed_password_stops_the_sync_after_one_attempt_until_the_user_enters_it(
    signed_in, v3_account, dovecot, mailbox
):
    address, old_password = mailbox
    assert sync_account(v3_account.pk) == 0 and MailAccount.objects.get(pk=v3_account.pk).status == "active"
    dovecot.set_password(address, "ganz-neu-2026")  # the user changed it at the provider

    sync_account(v3_account.pk)
    account = MailAccount.objects.get(pk=v3_account.pk)
    assert (account.status, account.last_sync_error) == ("reconnect", "auth_failed")
    assert account not in accounts_due_for_sync(v2_running=True)
    with no_connections():  # no second login with the old password
        assert sync_account(v3_account.pk) == 0

    page = signed_in.get(reverse("settings-mail")).content.decode()
    url = reverse("account-new-password", args=[v3_account.pk])
    assert "Passwort neu eingeben" in page and url in page
    form = signed_in.get(url).content.decode()
    assert "Die Anmeldung wurde abgelehnt" in form and old_password not in form

    assert signed_in.post(url, {"password": "auch-falsch"}).status_code == 302
    assert MailAccount.objects.get(pk=v3_account.pk).status == "active"
    sync_account(v3_account.pk)  # queued by the save; run here directly
    assert MailAccount.objects.get(pk=v3_account.pk).status == "reconnect"

    signed_in.post(url, {"password": "ganz-neu-2026"})
    sync_account(v3_account.pk)
    account = MailAccount.objects.get(pk=v3_account.pk)
    assert (account.status, account.last_sync_error) == ("active", "")
    assert crypto.decrypt_json(account.secret_encrypted) == {"password": "ganz-neu-2026"}


def test_the_page_is_only_for_the_owners_waiting_accounts(client, other_user, signed_in, v3_account):
    url = reverse("account-new-password", args=[v3_account.pk])
    assert signed_in.get(url)["Location"] == reverse("settings-mail")  # nothing to re-enter while active
    client.force_login(other_user)
    MailAccount.objects.filter(pk=v3_account.pk).update(status="reconnect")
    assert client.get(url).status_code == 404
    assert client.post(url, {"password": "x"}).status_code == 404


def test_an_exchange_account_stops_after_one_refused_login(make_account, user, fake_ews):
    account = make_account(user, "anna@firma.test", provider_kind="exchange", engine="v3", ews_url=fake_ews.url,
                           ews_auth_type="basic", tls_ca_pem=fake_ews.cert_pem, username=EWS_USER,
                           secret_encrypted=crypto.encrypt_json({"password": "altes-passwort"}))
    account.folders.create(name="INBOX", ews_sync_state="state-1")
    sync_account(account.pk)
    account.refresh_from_db()
    assert (account.status, account.last_sync_error) == ("reconnect", "ews_auth_failed")
    assert fake_ews.calls.count("401") >= 1
    calls = len(fake_ews.calls)
    sync_account(account.pk)
    assert len(fake_ews.calls) == calls
