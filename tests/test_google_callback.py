"""The Google callback as untrusted input, and a sign-in error that belongs to one attempt only.

A callback that answers no sign-in of this browser (forged state, no state, a replay of a used
answer, another user's answer) changes nothing and gets the 400 page the Microsoft callback
gives (tests/test_microsoft_signin.py), logged with its code. A refused sign-in's error is shown
until the user starts the sign-in again or picks another provider, and never after.
"""

import logging
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings
from django.test import Client
from django.urls import reverse

from migration.models import Migration, MigrationEvent
from migration.selectors import current_campaign
from tests.fakes.google_fixtures import fake_google_server, google  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db

WRONG_ACCOUNT = "mit einem anderen Konto angemeldet"


@pytest.fixture
def migration(google, user, make_account):
    google.add_user("anna@gmail.com")
    account = make_account(user, "anna@gmail.com")
    return Migration.objects.create(account=account, user=user, campaign=current_campaign(), provider_kind="google",
                                    status="awaiting_user")


def _answer(client, migration) -> str:
    """Start the sign-in and let the browser visit Google: the callback URL Google sends it back to."""
    start = client.post(reverse("google-sign-in", args=[migration.pk]))
    assert start.status_code == 302
    back = requests.get(start["Location"], verify=settings.GOOGLE_CA_FILE, allow_redirects=False, timeout=5)
    assert back.status_code == 302, back.text
    parts = urlsplit(back.headers["Location"])
    assert parts.path == reverse("google-callback")
    return f"{parts.path}?{parts.query}"


def _snapshot(migration) -> tuple:
    row = Migration.objects.get(pk=migration.pk)
    return (row.status, row.error_code, row.secret_encrypted, row.provider_kind,
            MigrationEvent.objects.filter(migration=migration).count())


def _page(client, migration) -> str:
    return client.get(reverse("migration-detail", args=[migration.pk])).content.decode()


@pytest.mark.parametrize("query", [
    {"code": "4/made-up", "state": "forged-state"},
    {"code": "4/made-up"},  # no state at all
    {"state": "", "error": "access_denied"},
    {"state": "forged-state", "error": "admin_policy_enforced"},
])
def test_a_callback_with_a_state_this_browser_did_not_send_changes_nothing(client, user, migration, query, caplog):
    client.force_login(user)
    _answer(client, migration)  # a real sign-in is under way in this browser
    before = _snapshot(migration)
    with caplog.at_level(logging.WARNING, logger="migration.google.views"):
        response = client.get(reverse("google-callback"), query)
    assert response.status_code == 400
    page = response.content.decode()
    assert "Die Antwort von Google gehört nicht zu Ihrer Anmeldung. Es wurde nichts geändert." in page
    assert 'data-testid="callback-error"' in page and reverse("settings-mail") in page
    assert _snapshot(migration) == before
    assert [r.getMessage() for r in caplog.records if r.name == "migration.google.views"] == [
        f"google callback refused for user {user.pk}: google_state_mismatch"]
    assert "made-up" not in caplog.text  # the code it brought is not logged


def test_a_replayed_answer_and_another_users_browser_get_the_same_page(client, user, other_user, migration, google):
    client.force_login(user)
    back = _answer(client, migration)
    stranger = Client()
    stranger.force_login(other_user)
    assert stranger.get(back).status_code == 400  # their session never sent this state
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_user"

    assert client.get(back).status_code == 302  # the right browser gets through once
    after = _snapshot(migration)
    assert after[0] == "verifying"
    replay = client.get(back)
    assert replay.status_code == 400 and "gehört nicht zu Ihrer Anmeldung" in replay.content.decode()
    assert _snapshot(migration) == after


def test_the_error_page_speaks_english_too(client, user, migration):
    client.force_login(user)
    response = client.get(reverse("google-callback"), {"state": "forged"}, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    page = response.content.decode()
    assert "<h1>Sign-in with Google</h1>" in page
    assert "gehört nicht zu Ihrer Anmeldung" not in page and "Google" in page.split("callback-error")[1]


def test_a_refused_sign_in_is_not_shown_again_after_switching_provider_and_back(client, user, migration, google):
    google.add_user("fremd@gmail.com")
    google.signs_in_as = "fremd@gmail.com"
    client.force_login(user)
    assert client.get(_answer(client, migration)).status_code == 302
    assert Migration.objects.get(pk=migration.pk).error_code == "google_wrong_account"
    assert WRONG_ACCOUNT in _page(client, migration)

    client.post(reverse("migration-choose", args=[migration.pk]), {"provider": "google"})  # Gmail with app password
    page = _page(client, migration)
    assert 'name="password"' in page and WRONG_ACCOUNT not in page
    client.post(reverse("migration-choose", args=[migration.pk]), {"provider": "google_signin"})
    page = _page(client, migration)
    assert 'data-testid="google-sign-in"' in page and WRONG_ACCOUNT not in page
    assert Migration.objects.get(pk=migration.pk).error_code == ""


def test_starting_the_sign_in_again_forgets_the_last_attempts_error(client, user, migration, google):
    google.denies = True
    client.force_login(user)
    client.get(_answer(client, migration))
    assert Migration.objects.get(pk=migration.pk).error_code == "google_denied"
    assert "Die Anmeldung bei Google wurde abgebrochen" in _page(client, migration)
    google.denies = False
    client.post(reverse("google-sign-in", args=[migration.pk]))  # to Google; the user comes back with "Zurück"
    assert Migration.objects.get(pk=migration.pk).error_code == ""
    assert "Die Anmeldung bei Google wurde abgebrochen" not in _page(client, migration)


def test_an_answer_to_a_sign_in_the_user_left_for_another_provider_changes_nothing(client, user, migration, google):
    client.force_login(user)
    back = _answer(client, migration)  # Google's answer is on its way (say, in another tab)
    client.post(reverse("migration-choose", args=[migration.pk]), {"provider": "imap_other"})
    before = _snapshot(migration)
    response = client.get(back)
    assert response.status_code == 400 and "gehört nicht zu Ihrer Anmeldung" in response.content.decode()
    assert _snapshot(migration) == before and before[3] == "imap"


@pytest.mark.parametrize("denies", [True, False])
def test_a_sign_in_answer_arriving_after_a_provider_switch_elsewhere_touches_neither_step_nor_error(
    client, user, migration, google, denies
):
    from migration.mask import choose_provider

    google.denies = denies
    client.force_login(user)
    back = _answer(client, migration)
    # The switch happened without this session (another browser of the same user): the flow is still here.
    choose_provider(migration=Migration.objects.get(pk=migration.pk), key="imap_other", actor="test")
    before = _snapshot(migration)
    assert client.get(back).status_code == 302
    assert _snapshot(migration) == before  # no Google error on the IMAP form, no switch to verifying

    page = _page(client, migration)
    assert "Die Anmeldung bei Google wurde abgebrochen" not in page and 'name="password"' in page


@pytest.mark.parametrize("name, provider, code", [("google-callback", "Google", "google_state_mismatch"),
                                                  ("microsoft-callback", "Microsoft", "ms_state_mismatch")])
def test_google_and_microsoft_answer_a_stray_callback_alike(client, user, name, provider, code, caplog):
    client.force_login(user)
    with caplog.at_level(logging.WARNING):
        response = client.get(reverse(name), {"code": "x", "state": "stray"})
    page = response.content.decode()
    assert response.status_code == 400 and f"<h1>Anmeldung bei {provider}</h1>" in page
    assert 'data-testid="callback-error"' in page and "Es wurde nichts geändert" in page
    assert f"callback refused for user {user.pk}: {code}" in caplog.text
