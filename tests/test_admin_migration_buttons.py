"""Retry and cancel on a migration's own admin page: the same services as the portal, the staff member recorded."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from migration import tasks
from migration.models import Migration, MigrationEvent, Status
from migration.selectors import current_campaign
from tests.conftest import make_user


@pytest.fixture
def queued(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks.run_migration, "delay", calls.append)
    return calls


def _migration(user, make_account, status, **fields):
    account = make_account(user, "anna@gmx.de")
    return Migration.objects.create(account=account, user=user, campaign=current_campaign(), provider_kind="imap",
                                    status=status, **fields)


def _page(client, migration):
    return client.get(reverse("admin:migration_migration_change", args=[migration.pk])).content.decode()


def _press(client, migration, action):
    return client.post(reverse("admin:migration-admin-action", args=[migration.pk, action]), follow=True)


@pytest.mark.django_db
def test_staff_retry_a_failed_migration_from_its_page(admin_client, admin_user, user, make_account, queued,
                                                      django_capture_on_commit_callbacks):
    migration = _migration(user, make_account, Status.FAILED, error_code="auth_failed")
    html = _page(admin_client, migration)
    assert 'data-testid="admin-retry"' in html and 'data-testid="admin-cancel"' in html

    with django_capture_on_commit_callbacks(execute=True):
        response = _press(admin_client, migration, "retry")

    assert "Die Migration wurde erneut gestartet." in response.content.decode()
    migration.refresh_from_db()
    assert (migration.status, migration.error_code, migration.attempts) == (Status.PENDING, "", 1)
    event = migration.events.last()
    assert (event.reason, event.actor) == ("retry", f"staff:{admin_user.pk}")
    assert queued == [migration.pk]
    assert 'data-testid="admin-retry"' not in _page(admin_client, migration)  # pending: only cancel is offered


@pytest.mark.django_db
def test_staff_cancel_a_waiting_migration_from_its_page(admin_client, admin_user, user, make_account):
    migration = _migration(user, make_account, Status.AWAITING_ADMIN_CONSENT)
    assert 'data-testid="admin-retry"' not in _page(admin_client, migration)

    _press(admin_client, migration, "cancel")

    migration.refresh_from_db()
    assert migration.status == Status.CANCELLED
    assert MigrationEvent.objects.filter(migration=migration, to_status=Status.CANCELLED, reason="cancelled by support",
                                         actor=f"staff:{admin_user.pk}").exists()
    html = _page(admin_client, migration)
    assert 'data-testid="admin-retry"' not in html and 'data-testid="admin-cancel"' not in html


@pytest.mark.django_db
def test_a_button_pressed_on_a_stale_page_changes_nothing(admin_client, user, make_account):
    migration = _migration(user, make_account, Status.DONE)
    response = _press(admin_client, migration, "retry")
    assert "Nicht ausgeführt: die Migration ist in einem anderen Status." in response.content.decode()
    migration.refresh_from_db()
    assert migration.status == Status.DONE and migration.events.count() == 0


@pytest.mark.django_db
def test_only_a_post_with_a_known_action_by_staff_who_may_change_acts(client, admin_client, django_user_model, user,
                                                                      make_account):
    migration = _migration(user, make_account, Status.FAILED)
    url = reverse("admin:migration-admin-action", args=[migration.pk, "retry"])
    assert admin_client.get(url).status_code == 405
    assert admin_client.post(reverse("admin:migration-admin-action", args=[migration.pk, "delete"])).status_code == 403

    viewer = make_user(django_user_model, "viewer@example.com")
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_migration"))
    client.force_login(viewer)
    assert 'data-testid="admin-retry"' not in _page(client, migration)
    assert client.post(url).status_code == 403

    client.force_login(user)  # not staff
    assert client.post(url).status_code == 302  # to the admin login
    migration.refresh_from_db()
    assert migration.status == Status.FAILED
