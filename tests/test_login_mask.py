"""The login mask: the way back to the picker and choosing another provider."""

import pytest
from django.urls import reverse

from migration import steps
from migration.models import Migration, MigrationEvent
from migration.services import start_migration

pytestmark = pytest.mark.django_db


@pytest.fixture
def waiting(user, make_account):
    account = make_account(user, "kunde@ionos.de")
    migration = start_migration(user=user, account=account)
    steps.run_migration(migration.pk)
    return Migration.objects.get(pk=migration.pk)


def test_it_offers_back_on_the_imap_step(client, user, waiting):
    client.force_login(user)
    page = client.get(reverse("migration-detail", args=[waiting.pk])).content.decode()
    assert "Zurück" in page and reverse("migration-picker", args=[waiting.pk]) in page


def test_it_shows_the_picker_and_the_full_list(client, user, waiting):
    client.force_login(user)
    picker = client.get(reverse("migration-picker", args=[waiting.pk])).content.decode()
    assert "Weiter mit Microsoft" in picker and "Alle Anbieter anzeigen" in picker
    full = client.get(reverse("migration-all-providers", args=[waiting.pk])).content.decode()
    for label in ("Microsoft 365 / Outlook.com", "Microsoft Exchange", "IONOS", "GMX", "WEB.DE", "T-Online",
                  "Strato", "Anderer IMAP-Anbieter"):
        assert label in full


@pytest.mark.parametrize("key, kind, host, username", [
    ("webde", "imap", "imap.web.de", "kunde"),
    ("gmx", "imap", "imap.gmx.net", "kunde@ionos.de"),
    ("imap_other", "imap", "", "kunde@ionos.de"),
    ("microsoft365", "microsoft", None, None),
    ("exchange", "exchange", None, None),
])
def test_it_switches_the_provider(client, user, waiting, key, kind, host, username):
    client.force_login(user)
    response = client.post(reverse("migration-choose", args=[waiting.pk]), {"provider": key})
    assert response.status_code == 302
    migration = Migration.objects.get(pk=waiting.pk)
    assert migration.provider_kind == kind and migration.status == "awaiting_user"
    assert migration.detected["chosen"] == key
    if host is not None:
        assert migration.detected["host"] == host and migration.detected["username"] == username
    assert MigrationEvent.objects.filter(migration=migration, reason=f"provider chosen: {key}").exists()


def test_it_refuses_unknown_providers_and_other_steps(client, user, waiting):
    client.force_login(user)
    client.post(reverse("migration-choose", args=[waiting.pk]), {"provider": "evil"})
    assert Migration.objects.get(pk=waiting.pk).provider_kind == "imap"
    Migration.objects.filter(pk=waiting.pk).update(status="verifying")
    client.post(reverse("migration-choose", args=[waiting.pk]), {"provider": "gmx"})
    assert "chosen" not in Migration.objects.get(pk=waiting.pk).detected


def test_it_hides_other_users_masks(client, other_user, waiting):
    client.force_login(other_user)
    assert client.get(reverse("migration-picker", args=[waiting.pk])).status_code == 404
    assert client.post(reverse("migration-choose", args=[waiting.pk]), {"provider": "gmx"}).status_code == 404


def test_choosing_exchange_shows_the_exchange_form(client, user, waiting):
    client.force_login(user)
    client.post(reverse("migration-choose", args=[waiting.pk]), {"provider": "exchange"})
    page = client.get(reverse("migration-detail", args=[waiting.pk])).content.decode()
    assert 'data-testid="exchange-form"' in page and 'name="server"' in page and "Zurück" in page
    assert 'name="host"' not in page  # not the IMAP form
    # An incomplete form is refused and changes nothing.
    response = client.post(reverse("migration-credentials", args=[waiting.pk]), {"password": "x"})
    assert response.status_code == 400
    assert Migration.objects.get(pk=waiting.pk).status == "awaiting_user"


@pytest.mark.parametrize("key, kind, field", [("gmx", "imap", 'name="host"'), ("exchange", "exchange", 'name="server"')])
def test_leaving_the_admin_consent_wait_for_another_provider_shows_its_form(client, user, waiting, key, kind, field):
    Migration.objects.filter(pk=waiting.pk).update(status="awaiting_admin_consent", provider_kind="microsoft",
                                                   detected={**waiting.detected, "tenant": "ionos.de"})
    client.force_login(user)
    client.post(reverse("migration-choose", args=[waiting.pk]), {"provider": key})
    migration = Migration.objects.get(pk=waiting.pk)
    assert (migration.status, migration.provider_kind) == ("awaiting_user", kind)
    assert migration.events.last().reason == f"provider chosen: {key}"
    page = client.get(reverse("migration-detail", args=[waiting.pk])).content.decode()
    assert field in page and 'name="password"' in page and 'data-testid="back"' in page


def test_the_picker_is_only_open_while_a_login_step_waits(client, user, waiting):
    Migration.objects.filter(pk=waiting.pk).update(status="done")
    client.force_login(user)
    detail = reverse("migration-detail", args=[waiting.pk])
    assert client.get(reverse("migration-picker", args=[waiting.pk]))["Location"] == detail
    assert client.get(reverse("migration-all-providers", args=[waiting.pk]))["Location"] == detail


def test_the_full_list_puts_google_first_among_the_big_ones_and_ends_with_any_other_imap(client, user, waiting):
    client.force_login(user)
    full = client.get(reverse("migration-all-providers", args=[waiting.pk])).content.decode()
    order = ["Google (Gmail, Google Workspace)", "Microsoft 365 / Outlook.com", "Microsoft Exchange",
             "Gmail mit App-Passwort (IMAP)", "iCloud Mail", "Yahoo Mail", "AOL Mail", "Zoho Mail", "GMX", "WEB.DE",
             "T-Online", "IONOS", "1&amp;1", "Strato", "freenet", "Posteo", "mailbox.org", "mail.de",
             "Telekom Homepage Center (Geschäftskunden)", "Hetzner", "ALL-INKL", "domainFACTORY", "Host Europe",
             "Mittwald", "united-domains", "Anderer IMAP-Anbieter"]
    positions = [full.index(f">{label}<") for label in order]
    assert positions == sorted(positions)


@pytest.mark.parametrize("key, host, hint", [
    ("hosteurope", "imap.hosteurope.de", "KIS von Host Europe"),
    ("mittwald", "mail.agenturserver.de", "Kundencenter von Mittwald"),
    ("telekom_business", "", "Homepage Center der Telekom"),
    ("imap_other", "", ""),
])
def test_a_new_provider_or_any_other_imap_server_can_be_chosen(client, user, waiting, key, host, hint):
    client.force_login(user)
    client.post(reverse("migration-choose", args=[waiting.pk]), {"provider": key})
    migration = Migration.objects.get(pk=waiting.pk)
    assert (migration.provider_kind, migration.detected["chosen"], migration.detected["host"]) == ("imap", key, host)
    page = client.get(reverse("migration-detail", args=[waiting.pk])).content.decode()
    assert 'name="host"' in page and 'name="password"' in page and hint in page
