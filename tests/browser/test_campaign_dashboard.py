"""The campaign dashboard in Chromium: a staff user reads the numbers, the chart, and follows a number to its list."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from migration.models import Migration, Status
from migration.selectors import current_campaign
from sync.models import MailAccount
from tests.browser.conftest import PASSWORD, TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def campaign_world():
    """40 accounts: 12 moved to V3 over the last days, some waiting, failed or never started."""
    User = get_user_model()
    staff = User.objects.create_user(username="support@example.com", email="support@example.com", password=PASSWORD,
                                     is_staff=True, is_superuser=True)
    owner = User.objects.create_user(username="anna@example.com", email="anna@example.com", password=PASSWORD)
    the_campaign = current_campaign()
    noon = timezone.localtime().replace(hour=12, minute=0)
    for i in range(40):
        domain = ["contoso.com", "fabrikam.de", "gmx.de", "web.de"][i % 4]
        kind = "microsoft" if domain in ("contoso.com", "fabrikam.de") else "imap"
        account = MailAccount.objects.create(owner=owner, address=f"konto{i}@{domain}", provider_kind=kind)
        if i < 12:  # moved: one or two a day over the last week
            MailAccount.objects.filter(pk=account.pk).update(engine="v3", v2_stopped_at=noon - timedelta(days=i // 2))
            status = Status.DONE
        else:
            status = [None, Status.AWAITING_USER, Status.AWAITING_ADMIN_CONSENT, Status.FAILED][i % 4]
        if status:
            migration = Migration.objects.create(account=account, user=owner, campaign=the_campaign,
                                                 provider_kind=kind, status=status,
                                                 error_code="auth_failed" if status == Status.FAILED else "")
            Migration.objects.filter(pk=migration.pk).update(created_at=timezone.now() - timedelta(days=10),
                                                             updated_at=timezone.now() - timedelta(days=i % 5))
    return staff


def test_staff_read_the_dashboard_and_follow_a_number(page, live_server, campaign_world, artifacts):
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.locator("input[name=username]").fill("support@example.com")
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("input[type=submit]").click()

    page.get_by_role("link", name="Kampagnen-Übersicht: Stand, Burn-down, hängende Migrationen").click()
    expect(page.get_by_test_id("summary")).to_contain_text("Noch 28 von 40 Konten auf V2", timeout=TIMEOUT)
    chart = page.get_by_test_id("burndown")
    expect(chart).to_be_visible()
    expect(chart).to_contain_text("Migrieren bis")
    expect(chart).to_contain_text("V2-Abschaltung")
    expect(page.get_by_test_id("forecast")).to_contain_text("Bei diesem Tempo")
    box = chart.bounding_box()
    assert box["width"] > 500 and box["height"] > 200  # drawn, not collapsed
    page.screenshot(path=str(artifacts / "campaign-dashboard.png"), full_page=True)

    page.locator('[data-state="failed"] .count a').click()
    expect(page.locator("#result_list tbody tr")).to_have_count(7)
    expect(page.locator("#result_list")).to_contain_text("Die Anmeldung wurde abgelehnt")
    page.screenshot(path=str(artifacts / "campaign-list-failed.png"), full_page=True)
