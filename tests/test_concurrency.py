"""Double clicks and two tabs: one live migration per account, enforced by PostgreSQL."""

import threading

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.urls import reverse

from migration.models import Campaign, Migration
from migration.selectors import current_campaign

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_starts_one_migration_for_concurrent_requests(user, make_account, settings):
    assert connection.vendor == "postgresql"  # select_for_update and constraints are real here
    account = make_account(user, "anna@gmx.de")
    current_campaign()
    barrier = threading.Barrier(8)
    locations, errors = [], []

    def click():
        client = Client()
        client.force_login(user)
        try:
            barrier.wait()
            response = client.post(reverse("migration-start", args=[account.pk]))
            locations.append((response.status_code, response["Location"]))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=click) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert Migration.objects.filter(account=account).count() == 1
    migration = Migration.objects.get(account=account)
    # Every click lands on the one migration that exists.
    assert {location for _, location in locations} == {reverse("migration-detail", args=[migration.pk])}
    assert migration.events.count() == 1


def test_it_refuses_a_second_live_migration_at_the_database(user, make_account):
    account = make_account(user, "anna@web.de")
    campaign = current_campaign()
    Migration.objects.create(account=account, user=user, campaign=campaign, provider_kind="imap")
    with pytest.raises(IntegrityError), transaction.atomic():
        Migration.objects.create(account=account, user=user, campaign=campaign, provider_kind="imap")


def test_it_allows_a_new_migration_after_a_failed_one(user, make_account):
    account = make_account(user, "anna@t-online.de")
    campaign = current_campaign()
    Migration.objects.create(account=account, user=user, campaign=campaign, provider_kind="imap", status="failed")
    Migration.objects.create(account=account, user=user, campaign=campaign, provider_kind="imap")
    assert Migration.objects.filter(account=account).count() == 2
    assert Campaign.objects.filter(is_active=True).count() == 1
