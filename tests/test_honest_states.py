"""Pages say what is really going on: cancelling asks first, the settings page names the migration's step,
a provider that is not set up is said before anyone is sent to it."""

import pytest
from django.urls import reverse

from migration.models import Migration, MigrationEvent, Status
from migration.selectors import current_campaign
from tests.test_pages import account_rows, migration_of

pytestmark = pytest.mark.django_db


def html_of(response) -> str:
    assert response.status_code == 200
    return response.content.decode()


# --- cancel asks, then confirms -----------------------------------------------------------------------------


def test_it_asks_before_cancelling(signed_in, user, make_account):
    migration = migration_of(make_account(user, "anna@gmx.de"), Status.AWAITING_USER)

    detail = html_of(signed_in.get(reverse("migration-detail", args=[migration.pk])))
    cancel_url = reverse("migration-cancel", args=[migration.pk])
    assert f'<a href="{cancel_url}" class="cancel-link">Migration abbrechen …</a>' in detail
    assert f'action="{cancel_url}"' not in detail  # one click does not cancel

    page = html_of(signed_in.get(cancel_url))
    assert "<h1>Migration abbrechen?</h1>" in page
    assert "synchronisiert dann unverändert weiter über V2" in page
    assert f'<form method="post" action="{cancel_url}"' in page and "Ja, Migration abbrechen" in page
    assert f'href="{reverse("migration-detail", args=[migration.pk])}">Nein, zurück zur Migration</a>' in page
    assert Migration.objects.get(pk=migration.pk).status == Status.AWAITING_USER


def test_it_confirms_the_cancel(signed_in, user, make_account):
    migration = migration_of(make_account(user, "anna@gmx.de"), Status.AWAITING_USER)

    response = signed_in.post(reverse("migration-cancel", args=[migration.pk]), follow=True)

    assert Migration.objects.get(pk=migration.pk).status == Status.CANCELLED
    assert MigrationEvent.objects.filter(migration=migration, to_status=Status.CANCELLED).count() == 1
    assert ("Die Migration von anna@gmx.de wurde abgebrochen. Das Konto synchronisiert unverändert weiter "
            "über V2.") in html_of(response)


@pytest.mark.parametrize("status", [Status.DONE, Status.CANCELLED, Status.HANDING_OVER])
def test_it_has_nothing_to_ask_about_a_migration_that_cannot_be_cancelled(signed_in, user, make_account, status):
    migration = migration_of(make_account(user, "anna@gmx.de"), status)
    response = signed_in.get(reverse("migration-cancel", args=[migration.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("migration-detail", args=[migration.pk])


# --- before starting: what a migration does -----------------------------------------------------------------

PROMISE = ("Die Migration dauert etwa eine Minute: Ihre E-Mails bleiben in Ihrem Postfach, das CRM liest sie nur, "
           "und Ihr Passwort oder Ihre Microsoft-Anmeldung wird verschlüsselt gespeichert.")


def test_it_says_what_happens_before_the_first_click(signed_in, user, make_account):
    make_account(user, "anna@gmx.de")

    html = html_of(signed_in.get(reverse("settings-mail")))

    assert f'<p data-testid="before-you-start">{PROMISE}</p>' in html
    assert html.index(PROMISE) < html.index("Zu V3 migrieren")


def test_it_says_it_in_english_too(signed_in, user, make_account):
    make_account(user, "anna@gmx.de")
    signed_in.post(reverse("set_language"), {"language": "en", "next": "/"})

    html = html_of(signed_in.get(reverse("settings-mail")))

    assert ("The migration takes about a minute: your emails stay in your mailbox, the CRM only reads them, and "
            "your password or Microsoft sign-in is stored encrypted.") in html


@pytest.mark.parametrize("engine, status", [("v3", None), ("v2", Status.AWAITING_USER)])
def test_it_says_nothing_when_there_is_nothing_to_start(signed_in, user, make_account, engine, status):
    account = make_account(user, "anna@gmx.de", engine=engine)
    if status:
        migration_of(account, status)

    assert 'data-testid="before-you-start"' not in html_of(signed_in.get(reverse("settings-mail")))


# --- the settings page names the step ----------------------------------------------------------------------


@pytest.mark.parametrize("status, text, button", [
    (Status.AWAITING_ADMIN_CONSENT, "Migration wartet auf die Zustimmung Ihres Administrators", "Stand ansehen"),
    (Status.AWAITING_USER, "Migration wartet auf Ihre Anmeldung", "Migration fortsetzen"),
    (Status.VERIFYING, "Migration läuft: Verbindung wird geprüft", "Migration fortsetzen"),
    (Status.PENDING, "Migration wird gestartet", "Migration fortsetzen"),
])
def test_it_shows_the_migrations_real_state(signed_in, user, make_account, status, text, button):
    account = make_account(user, "anna@gmx.de")
    migration = migration_of(account, status)

    row = account_rows(signed_in)[account.pk]

    assert f'<span data-testid="migration-state">{text}</span>' in row
    assert ">Aktiv<" not in row and "Aktiv" not in row.split('data-label="Status">')[1].split("</td>")[0]
    assert f'href="{reverse("migration-detail", args=[migration.pk])}">{button}</a>' in row


def test_it_names_the_reason_of_the_last_failure(signed_in, user, make_account):
    account = make_account(user, "anna@gmx.de")
    Migration.objects.filter(pk=migration_of(account, Status.FAILED).pk).update(error_code="auth_failed")

    row = account_rows(signed_in)[account.pk]

    assert "Letzter Versuch fehlgeschlagen" in row
    assert '<span class="hint" data-testid="last-failure">Die Anmeldung wurde abgelehnt.' in row


def test_it_says_waiting_for_what_while_a_migration_starts(signed_in, user, make_account):
    migration = migration_of(make_account(user, "anna@gmx.de"), Status.PENDING)
    assert signed_in.get(reverse("migration-status", args=[migration.pk])).json()["label"] == "Wird gestartet"
    assert '<span data-testid="status-label">Wird gestartet</span>' in html_of(
        signed_in.get(reverse("migration-detail", args=[migration.pk])))


# --- a provider that is not set up is said before the redirect ---------------------------------------------


@pytest.mark.parametrize("page", ["migration-picker", "migration-all-providers"])
def test_it_says_microsoft_is_not_set_up_on_the_button(signed_in, user, make_account, settings, page):
    settings.MS_CLIENT_ID, settings.MS_CLIENT_SECRET = "", ""
    migration = migration_of(make_account(user, "anna@ionos-kunde.de"), Status.AWAITING_USER)

    html = html_of(signed_in.get(reverse(page, args=[migration.pk])))

    assert 'disabled aria-describedby="unavailable-microsoft365"' in html
    assert ('<p class="hint" id="unavailable-microsoft365" data-testid="unavailable">Die Anmeldung mit Microsoft '
            'ist in diesem Portal noch nicht eingerichtet.') in html


def test_it_offers_microsoft_when_it_is_set_up(signed_in, user, make_account, settings):
    settings.MS_CLIENT_ID, settings.MS_CLIENT_SECRET = "client-id", "client-secret"
    # The picker's other sign-in button (Google) is set up too: no button of the page may be disabled.
    settings.GOOGLE_CLIENT_ID, settings.GOOGLE_CLIENT_SECRET = "google-id", "google-secret"
    migration = migration_of(make_account(user, "anna@ionos-kunde.de"), Status.AWAITING_USER)

    html = html_of(signed_in.get(reverse("migration-picker", args=[migration.pk])))

    assert "Weiter mit Microsoft" in html and "disabled" not in html and 'data-testid="unavailable"' not in html


def test_the_microsoft_step_says_so_instead_of_promising_a_redirect(signed_in, user, make_account, settings):
    settings.MS_CLIENT_ID, settings.MS_CLIENT_SECRET = "", ""
    account = make_account(user, "anna@contoso.de", provider_kind="microsoft")
    migration = Migration.objects.create(account=account, user=user, campaign=current_campaign(),
                                         provider_kind="microsoft", status=Status.AWAITING_USER)

    html = html_of(signed_in.get(reverse("migration-detail", args=[migration.pk])))

    assert "Sie werden zu Microsoft weitergeleitet" not in html
    assert "noch nicht eingerichtet" in html
    assert reverse("microsoft-sign-in", args=[migration.pk]) not in html


# --- allauth's pages speak to users formally, in the portal's style ----------------------------------------


def test_the_password_reset_speaks_formally(client, user, mailoutbox):
    page = html_of(client.get(reverse("account_reset_password")))
    assert "<h1>Passwort zurücksetzen</h1>" in page and 'class="button primary">Link senden</button>' in page
    assert "Geben Sie die E-Mail-Adresse Ihres CRM-Zugangs ein" in page
    assert " du " not in page and "Gib " not in page and "deine" not in page

    done = html_of(client.post(reverse("account_reset_password"), {"email": user.email}, follow=True))
    assert "Bitte prüfen Sie Ihr Postfach" in done
    assert len(mailoutbox) == 1


def test_a_used_reset_link_says_what_to_do(client, user):
    page = html_of(client.get(reverse("account_reset_password_from_key", kwargs={"uidb36": "zz", "key": "x-y"})))
    assert "Der Link ist nicht mehr gültig" in page
    assert f'href="{reverse("account_reset_password")}">Fordern Sie einen neuen Link an.</a>' in page
