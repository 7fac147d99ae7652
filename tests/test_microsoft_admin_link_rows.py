"""Anonymous posts on an admin-link page: bounded, expiring rows only, and the admin's way still works."""

import re
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from migration import services, steps, tasks
from migration.microsoft import consent
from migration.models import AdminConsentRequest, Migration, TenantConsent
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    browser_get, fake_microsoft_server, local, microsoft, query_of, sign_in,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def link(client, user, make_account, microsoft) -> str:
    """The admin link of a migration that waits for admin consent (fabrikam.de)."""
    migration = services.start_migration(user=user, account=make_account(user, "lena@fabrikam.de",
                                                                          provider_kind="microsoft"))
    assert steps.run_migration(migration.pk) == "awaiting_user"
    client.force_login(user)
    sign_in(client, microsoft, migration)
    assert Migration.objects.get(pk=migration.pk).status == "awaiting_admin_consent"
    page = client.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    return local(re.search(r'value="([^"]+)" data-testid="admin-link"', page)[1].replace("&amp;", "&"))


def test_many_anonymous_posts_leave_a_bounded_number_of_rows(link):
    sessions, tenants = Session.objects.count(), TenantConsent.objects.count()
    for _ in range(3 * consent.MAX_OPEN_REQUESTS):
        response = Client().post(link)  # a new visitor each time: no cookies
        assert response.status_code == 302 and "/adminconsent?" in response["Location"]
    assert AdminConsentRequest.objects.count() == consent.MAX_OPEN_REQUESTS
    assert Session.objects.count() == sessions  # no session row for a visitor without a login
    assert TenantConsent.objects.count() == tenants


def test_the_sweeper_deletes_expired_requests(link):
    for _ in range(5):
        Client().post(link)
    AdminConsentRequest.objects.update(created_at=timezone.now() - consent.REQUEST_MAX_AGE - timedelta(seconds=1))
    Client().post(link)  # a fresh one stays
    assert tasks.sweep_stuck_migrations.apply().successful()
    assert AdminConsentRequest.objects.count() == 1


def test_the_admin_without_a_login_still_consents_after_a_flood(link, microsoft):
    for _ in range(2 * consent.MAX_OPEN_REQUESTS):
        Client().post(link)
    sessions = Session.objects.count()
    admin = Client()
    response = admin.post(link)
    assert response.cookies["ms_admin_consent"]["httponly"] and response.cookies["ms_admin_consent"]["samesite"] == "Lax"
    answer = browser_get(microsoft, response["Location"])
    result = admin.get(local(answer))
    assert result.status_code == 200 and "Vielen Dank, Ihre Antwort ist eingegangen." in result.content.decode()
    # Reported, not granted: only a user's sign-in at Microsoft proves the consent (since 2fb98a3).
    assert TenantConsent.objects.get(tenant="fabrikam.de").status == "reported"
    assert Session.objects.count() == sessions


def test_another_browser_cannot_use_the_admins_state(link, microsoft):
    admin = Client()
    answer = browser_get(microsoft, admin.post(link)["Location"])
    stranger = Client()
    assert stranger.get(local(answer)).status_code == 400
    # Nor with a cookie of its own that it made up: the cookie is signed.
    stranger.cookies["ms_admin_consent"] = query_of(answer)["state"]
    assert stranger.get(local(answer)).status_code == 400
    assert TenantConsent.objects.get(tenant="fabrikam.de").status == "requested"
