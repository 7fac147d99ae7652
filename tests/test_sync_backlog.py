"""The sync backlog on GET /health/ and on the staff's campaign dashboard: due, queued, running, oldest wait."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from sync import leases
from sync.models import MailAccount

pytestmark = pytest.mark.django_db


@pytest.fixture
def backlog(user, make_account, settings):
    """2 due (the longer one 10.5 minutes overdue), 3 queued, 1 running, 1 not due, 1 stopped, 1 queued long ago."""
    now = timezone.now()
    made = [make_account(user, f"konto{n}@firma.example", imap_host="imap.firma.example", engine="v3")
            for n in range(9)]
    rows = MailAccount.objects.filter
    rows(pk=made[0].pk).update(sync_due_at=now - timedelta(minutes=10, seconds=30))
    rows(pk=made[1].pk).update(sync_due_at=now - timedelta(minutes=1))
    rows(pk__in=[a.pk for a in made[2:5]]).update(sync_queued_at=now - timedelta(seconds=30),
                                                  sync_due_at=now + timedelta(minutes=1))
    assert leases.claim(made[5].pk)
    rows(pk=made[6].pk).update(sync_due_at=now + timedelta(minutes=5))
    rows(pk=made[7].pk).update(status="stopped", sync_due_at=now - timedelta(hours=5))
    # A queued mark older than SYNC_QUEUED_TIMEOUT_SECONDS: the message was lost, the account is due again.
    rows(pk=made[8].pk).update(sync_queued_at=now - timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT_SECONDS + 1),
                               sync_due_at=now - timedelta(minutes=2))
    return made


def test_health_reports_the_sync_backlog(client, backlog):
    body = client.get(reverse("health")).json()
    figures = body["checks"]["sync_backlog"]
    assert {key: figures[key] for key in ("due", "queued", "running")} == {"due": 3, "queued": 3, "running": 1}
    assert 630 <= figures["oldest_due_seconds"] < 630 + 30


def test_health_reports_an_empty_backlog_as_zeros(client):
    assert client.get(reverse("health")).json()["checks"]["sync_backlog"] == {
        "due": 0, "queued": 0, "running": 0, "oldest_due_seconds": 0}


def test_the_campaign_dashboard_shows_the_backlog(admin_client, backlog):
    page = admin_client.get(reverse("admin:campaign-dashboard")).content.decode()
    assert 'data-testid="sync-backlog"' in page
    assert "Synchronisierung: 3 Konten fällig, 3 eingereiht, 1 laufend." in page
    assert "wartet seit 10\xa0Minuten" in page
