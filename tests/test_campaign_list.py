"""The support list of accounts: filters, CSV export of a filtered list, bulk actions through the services."""

import csv
import io

import pytest
from django.core import mail
from django.urls import reverse

from migration import reminders, retry_mail, tasks
from migration.models import Migration, MigrationEvent, Reminder, Status
from migration.selectors import current_campaign

LIST = "admin:migration_campaignaccount_changelist"


@pytest.fixture
def queued(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks.run_migration, "delay", lambda pk: calls.append(("migration", pk)))
    monkeypatch.setattr(tasks.send_reminder, "delay", lambda pk: calls.append(("reminder", pk)))
    monkeypatch.setattr(tasks.send_retry_mail, "delay", lambda pk, attempt: calls.append(("retry-mail", pk, attempt)))
    return calls


@pytest.fixture
def world(user, other_user, make_account):
    def migration(account, status, **fields):
        return Migration.objects.create(account=account, user=account.owner, campaign=current_campaign(),
                                        provider_kind=account.provider_kind, status=status, **fields)

    jurgen = make_account(user, "jürgen.müller@bäckerei-groß.de")
    failed = make_account(user, "anna@gmx.de")
    waiting = make_account(other_user, "bernd@contoso.com", provider_kind="microsoft")
    done = make_account(other_user, "bernd@firma.de", engine="v3")
    return {
        "jurgen": jurgen, "failed": failed, "waiting": waiting, "done": done,
        "failed_migration": migration(failed, Status.FAILED, error_code="auth_failed"),
        "waiting_migration": migration(waiting, Status.AWAITING_ADMIN_CONSENT),
    }


def act(client, action, *accounts):
    return client.post(reverse(LIST), {"action": action, "_selected_action": [a.pk for a in accounts]}, follow=True)


@pytest.mark.django_db
@pytest.mark.parametrize("params, expected", [
    ({"engine__exact": "v2"}, {"jurgen", "failed", "waiting"}),
    ({"state": "failed"}, {"failed"}),
    ({"state": "awaiting_admin_consent"}, {"waiting"}),
    ({"state": "never_started"}, {"jurgen"}),
    ({"state": "done"}, {"done"}),
    ({"provider_kind__exact": "microsoft"}, {"waiting"}),
    ({"domain": "contoso.com"}, {"waiting"}),
    ({"domain": "CONTOSO.com"}, {"waiting"}),
    ({"error": "auth_failed"}, {"failed"}),
    ({"q": "müller"}, {"jurgen"}),
])
def test_it_filters_the_accounts(admin_client, world, params, expected):
    response = admin_client.get(reverse(LIST), params)
    assert response.status_code == 200
    assert set(response.context["cl"].result_list) == {world[k] for k in expected}


@pytest.mark.django_db
def test_it_shows_the_latest_migrations_state_and_error(admin_client, world):
    html = admin_client.get(reverse(LIST)).content.decode()
    assert "Wartet auf Administrator-Zustimmung" in html and "Nie begonnen" in html
    assert "Die Anmeldung wurde abgelehnt." in html and "(auth_failed)" in html


@pytest.mark.django_db
def test_it_exports_the_filtered_list_as_csv_with_umlauts(admin_client, world):
    html = admin_client.get(reverse(LIST), {"engine__exact": "v2"}).content.decode()
    assert 'href="/admin/migration/campaignaccount/export/?engine__exact=v2"' in html

    response = admin_client.get(reverse("admin:campaign-export"), {"engine__exact": "v2"})

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    body = b"".join(response.streaming_content)
    assert body.startswith(b"\xef\xbb\xbf")  # the BOM: Excel then reads UTF-8
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig")), delimiter=";"))
    assert rows[0][:3] == ["E-Mail-Adresse", "Benutzer", "Anbieterart"]
    addresses = {row[0] for row in rows[1:]}
    assert addresses == {"jürgen.müller@bäckerei-groß.de", "anna@gmx.de", "bernd@contoso.com"}
    failed = next(row for row in rows if row[0] == "anna@gmx.de")
    assert "Fehlgeschlagen" in failed and "auth_failed" in failed


@pytest.mark.django_db
def test_it_quotes_cells_excel_would_run_as_formulas(admin_client, user, make_account):
    make_account(user, "=cmd@evil.example")
    body = b"".join(admin_client.get(reverse("admin:campaign-export")).streaming_content).decode("utf-8-sig")
    assert "'=cmd@evil.example" in body


@pytest.mark.django_db
def test_the_export_is_for_staff_only(client, user, world):
    client.force_login(user)
    response = client.get(reverse("admin:campaign-export"))
    assert response.status_code == 302 and "/admin/login/" in response.url


@pytest.mark.django_db
def test_bulk_retry_goes_through_the_service_and_names_the_staff_member(
        admin_client, admin_user, world, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = act(admin_client, "retry", world["failed"], world["waiting"], world["jurgen"])
    assert "1 ausgeführt, 2 übersprungen" in response.content.decode()
    migration = world["failed_migration"]
    migration.refresh_from_db()
    assert migration.status == Status.PENDING
    event = migration.events.last()
    assert (event.reason, event.actor) == ("retry", f"staff:{admin_user.pk}")
    assert queued == [("migration", migration.pk), ("retry-mail", migration.pk, migration.attempts)]
    # What the worker does with the queued mail: the user hears it once, with the link to the migration.
    assert retry_mail.send(migration.pk, migration.attempts) and not retry_mail.send(migration.pk, migration.attempts)
    [message] = mail.outbox
    assert message.to == [migration.user.email] and "anna@gmx.de" in message.subject
    assert f"/migration/{migration.pk}/" in message.body


@pytest.mark.django_db
def test_a_users_own_retry_sends_no_mail(client, user, world, queued, django_capture_on_commit_callbacks):
    client.force_login(user)
    migration = world["failed_migration"]
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("migration-retry", args=[migration.pk]))
    migration.refresh_from_db()
    assert migration.status != Status.FAILED and not [call for call in queued if call[0] == "retry-mail"]


@pytest.mark.django_db
def test_bulk_cancel_goes_through_the_service(admin_client, admin_user, world):
    response = act(admin_client, "cancel", world["waiting"], world["done"])
    assert "1 ausgeführt, 1 übersprungen" in response.content.decode()
    migration = world["waiting_migration"]
    migration.refresh_from_db()
    assert migration.status == Status.CANCELLED
    assert MigrationEvent.objects.filter(migration=migration, to_status=Status.CANCELLED,
                                         actor=f"staff:{admin_user.pk}", reason="cancelled by support").exists()


@pytest.mark.django_db
def test_bulk_reminder_mails_each_user_once_about_their_v2_accounts(
        admin_client, admin_user, user, other_user, world, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = act(admin_client, "send_reminder", world["jurgen"], world["failed"], world["waiting"], world["done"])
    assert "2 Erinnerungen gesendet, 0 Benutzer übersprungen" in response.content.decode()
    reminders_by_user = {r.user_id: r for r in Reminder.objects.all()}
    assert set(reminders_by_user) == {user.pk, other_user.pk}
    assert reminders_by_user[user.pk].addresses.splitlines() == ["anna@gmx.de", "jürgen.müller@bäckerei-groß.de"]
    assert reminders_by_user[other_user.pk].addresses == "bernd@contoso.com"  # not the account already on V3
    assert all(r.sent_by == admin_user for r in reminders_by_user.values())

    for kind, pk in queued:  # what the worker does with each queued id
        assert kind == "reminder" and reminders.send(pk)
        assert not reminders.send(pk)  # a redelivered task sends nothing
    assert sorted(m.to[0] for m in mail.outbox) == [user.email, other_user.email]
    anna = next(m for m in mail.outbox if m.to == [user.email])
    assert "jürgen.müller@bäckerei-groß.de" in anna.body and "/einstellungen/email-synchronisierung/" in anna.body
    # Each address links straight to its own row with "Zu V3 migrieren".
    assert f"/einstellungen/email-synchronisierung/#account-{world['failed'].pk}" in anna.body
    assert f"/einstellungen/email-synchronisierung/#account-{world['jurgen'].pk}" in anna.body
    assert Reminder.objects.filter(sent_at__isnull=False).count() == 2

    # Pressed again the same day: nobody is reminded twice.
    with django_capture_on_commit_callbacks(execute=True):
        response = act(admin_client, "send_reminder", world["jurgen"], world["waiting"])
    assert "0 Erinnerungen gesendet, 2 Benutzer übersprungen" in response.content.decode()
    assert Reminder.objects.count() == 2


@pytest.mark.django_db
def test_it_offers_each_error_once_as_a_filter(admin_client, world, user, make_account):
    for i in range(3):
        account = make_account(user, f"noch{i}@gmx.de")
        Migration.objects.create(account=account, user=user, campaign=current_campaign(), provider_kind="imap",
                                 status=Status.FAILED, error_code="auth_failed")
    response = admin_client.get(reverse(LIST))
    spec = next(s for s in response.context["cl"].filter_specs if getattr(s, "parameter_name", "") == "error")
    assert [code for code, _label in spec.lookup_choices] == ["auth_failed"]
