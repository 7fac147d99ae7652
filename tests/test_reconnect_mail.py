"""A V3 account that needs its user again: one e-mail to the owner, not one per sync run."""

import pytest
from django.core import mail

from sync import crypto, notifications, services
from sync.models import AccountStatus


@pytest.fixture
def queued(monkeypatch):
    calls = []
    monkeypatch.setattr(notifications, "enqueue_reconnect_mail", calls.append)
    return calls


@pytest.mark.django_db
def test_a_refused_password_mails_the_owner_once(user, make_account, queued, django_capture_on_commit_callbacks):
    account = make_account(user, "anna@firma.de", engine="v3", secret_encrypted=crypto.encrypt_json({"password": "x"}))
    with django_capture_on_commit_callbacks(execute=True):
        services.record_v3_failure(account_id=account.pk, error_code="auth_failed")
        services.record_v3_failure(account_id=account.pk, error_code="auth_failed")  # a second run meets it too
    assert queued == [account.pk]
    account.refresh_from_db()
    assert (account.status, account.last_sync_error) == (AccountStatus.RECONNECT, "auth_failed")

    assert notifications.send_reconnect_mail(account.pk)
    [message] = mail.outbox
    assert message.to == [user.email] and "anna@firma.de" in message.subject
    assert "/einstellungen/email-synchronisierung/" in message.body and "Neu verbinden" in message.body


@pytest.mark.django_db
def test_a_revoked_microsoft_grant_mails_once_and_not_after_the_user_reconnected(
        user, make_account, queued, django_capture_on_commit_callbacks):
    token = crypto.encrypt_json({"cache": "{}", "home_account_id": "h"})
    account = make_account(user, "anna@contoso.com", engine="v3", provider_kind="microsoft",
                           token_cache_encrypted=token)
    with django_capture_on_commit_callbacks(execute=True):
        services.mark_reconnect(account_id=account.pk, expected=token)
        services.mark_reconnect(account_id=account.pk, expected=token)
    assert queued == [account.pk]
    account.status = AccountStatus.ACTIVE
    account.save(update_fields=["status"])
    assert not notifications.send_reconnect_mail(account.pk)  # fixed before the mail left: nothing to say
    assert mail.outbox == []


@pytest.mark.django_db
def test_a_stopped_account_is_left_alone(user, make_account, queued, django_capture_on_commit_callbacks):
    account = make_account(user, "anna@firma.de", engine="v3", status=AccountStatus.STOPPED)
    with django_capture_on_commit_callbacks(execute=True):
        services.record_v3_failure(account_id=account.pk, error_code="ews_auth_failed")
    account.refresh_from_db()
    assert account.status == AccountStatus.STOPPED and queued == []
