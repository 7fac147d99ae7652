"""Each mail in its reader's language: the DE/EN switch is kept on the user's profile, and mails follow it."""

import pytest
from django.conf import settings
from django.core import mail
from django.urls import reverse

from migration import reminders
from migration.models import Reminder
from portal import profiles
from portal.models import UserProfile
from sync import notifications
from sync.models import AccountStatus


@pytest.fixture
def no_queue(monkeypatch):
    from migration import tasks

    monkeypatch.setattr(tasks.send_reminder, "delay", lambda pk: None)


@pytest.mark.django_db
def test_the_language_switch_is_kept_on_the_profile(signed_in, user):
    response = signed_in.post(reverse("set_language"), {"language": "en", "next": "/"})
    assert response.status_code == 302 and response.cookies[settings.LANGUAGE_COOKIE_NAME].value == "en"
    assert UserProfile.objects.get(user=user).language == "en"

    signed_in.post(reverse("set_language"), {"language": "de", "next": "/"})
    assert UserProfile.objects.get(user=user).language == "de"


@pytest.mark.django_db
@pytest.mark.parametrize("language", ["fr", "", "en-x-evil"])
def test_an_unknown_language_is_not_kept(signed_in, user, language):
    signed_in.post(reverse("set_language"), {"language": language, "next": "/"})
    assert not UserProfile.objects.filter(user=user).exists()
    assert profiles.language_of(user) == "de"


@pytest.mark.django_db
def test_a_visitor_who_is_not_signed_in_switches_the_pages_only(client):
    response = client.post(reverse("set_language"), {"language": "en", "next": "/"})
    assert response.cookies[settings.LANGUAGE_COOKIE_NAME].value == "en"
    assert not UserProfile.objects.exists()


@pytest.mark.django_db
def test_the_settings_page_sets_the_mail_language_and_reminders(signed_in, user):
    html = signed_in.get(reverse("settings-notifications")).content.decode()
    assert "E-Mail-Benachrichtigungen" in html and 'name="campaign_reminders"' in html and "checked" in html

    response = signed_in.post(reverse("settings-notifications"), {"language": "en"}, follow=True)

    profile = UserProfile.objects.get(user=user)
    assert (profile.language, profile.campaign_reminders) == ("en", False)
    assert "Your settings have been saved." in response.content.decode()  # the pages follow the choice
    assert response.redirect_chain[-1][0] == reverse("settings-notifications")


@pytest.mark.django_db
def test_the_settings_page_refuses_a_forged_language(signed_in, user):
    response = signed_in.post(reverse("settings-notifications"), {"language": "xx", "campaign_reminders": "on"})
    assert response.status_code == 200 and not UserProfile.objects.exists()


@pytest.mark.django_db
def test_a_reminder_is_in_english_for_a_user_who_chose_english(user, other_user, make_account, no_queue):
    profiles.set_language(user=user, language="en")
    make_account(user, "anna@gmx.de")
    make_account(other_user, "bernd@gmx.de")
    reminders.remind(user_ids=[user.pk, other_user.pk], sent_by=None)
    for reminder in Reminder.objects.all():
        assert reminders.send(reminder.pk)

    english = next(m for m in mail.outbox if m.to == [user.email])
    german = next(m for m in mail.outbox if m.to == [other_user.email])
    migrate_by = Reminder.objects.first().campaign.migrate_by
    assert english.subject == f"Please migrate your email sync by {migrate_by.day} {migrate_by:%b %Y}"
    assert "Migrate to V3" in english.body and "Zu V3 migrieren" not in english.body
    assert german.subject == f"Bitte migrieren Sie Ihre E-Mail-Synchronisierung bis zum {migrate_by:%d.%m.%Y}"


@pytest.mark.django_db
def test_the_reconnect_mail_is_in_the_owners_language(user, make_account):
    profiles.set_language(user=user, language="en")
    account = make_account(user, "anna@firma.de", engine="v3", status=AccountStatus.RECONNECT)
    assert notifications.send_reconnect_mail(account.pk)
    [message] = mail.outbox
    assert message.subject == "Email sync of anna@firma.de interrupted: please reconnect"
