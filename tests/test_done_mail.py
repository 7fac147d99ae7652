"""The confirmation e-mail after a finished migration: once, in the user's language, retried after a refusal."""

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from migration import done_mail, tasks
from migration.models import Migration, Status
from migration.selectors import current_campaign
from portal import profiles
from portal.devservers import free_port


@pytest.fixture
def done(user, make_account):
    account = make_account(user, "anna@gmx.de", engine="v3")
    return Migration.objects.create(account=account, user=user, campaign=current_campaign(), provider_kind="imap",
                                    status=Status.DONE, finished_at=timezone.now())


@pytest.mark.django_db
def test_it_confirms_a_finished_migration_once(done, user):
    assert done_mail.send(done.pk)
    assert not done_mail.send(done.pk)  # the task delivered twice
    [message] = mail.outbox
    assert message.to == [user.email]
    assert message.subject == "Migration abgeschlossen: anna@gmx.de synchronisiert jetzt über V3"
    assert "/einstellungen/email-synchronisierung/" in message.body


@pytest.mark.django_db
def test_it_speaks_the_users_language(done, user):
    profiles.set_language(user=user, language="en")
    assert done_mail.send(done.pk)
    assert mail.outbox[0].subject == "Migration complete: anna@gmx.de now syncs through V3"


@pytest.mark.django_db
@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED, Status.HANDING_OVER])
def test_nothing_is_confirmed_that_did_not_finish(user, make_account, status):
    account = make_account(user, "anna@gmx.de")
    migration = Migration.objects.create(account=account, user=user, campaign=current_campaign(),
                                         provider_kind="imap", status=status)
    assert not done_mail.send(migration.pk)
    assert mail.outbox == []


@pytest.mark.django_db
def test_a_refused_mail_is_tried_again_by_the_hourly_beat(done, settings, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 2  # nobody listens
    assert not done_mail.send(done.pk)
    done.refresh_from_db()
    assert done.done_mail_sent_at is None  # the claim is released

    queued = []
    monkeypatch.setattr(tasks.send_done_mail, "delay", queued.append)
    assert done_mail.requeue_unsent(now=timezone.now()) == []  # not before 15 minutes
    with django_capture_on_commit_callbacks(execute=True):
        assert done_mail.requeue_unsent(now=timezone.now() + timedelta(minutes=16)) == [done.pk]
    assert done_mail.requeue_unsent(now=timezone.now() + timedelta(days=2)) == []  # bounded: one day
    assert queued == [done.pk]

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert done_mail.send(done.pk) and len(mail.outbox) == 1
