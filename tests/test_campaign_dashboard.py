"""The campaign dashboard: its numbers against real rows, the lists behind them, a bounded number of queries."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from migration import campaign
from migration.campaign import CampaignState
from migration.models import Migration, Status, TenantConsent
from migration.selectors import current_campaign
from sync.models import AccountStatus, MailAccount

DASHBOARD = "admin:campaign-dashboard"
LIST = "admin:migration_campaignaccount_changelist"

# state -> how the seed makes an account of it: (engine, account status, latest migration status or None)
RECIPES = {
    CampaignState.NOT_STARTED: [("v2", "active", None), ("v2", "active", Status.CANCELLED)],
    CampaignState.IN_PROGRESS: [("v2", "active", Status.PENDING), ("v2", "active", Status.VERIFYING)],
    CampaignState.AWAITING_USER: [("v2", "active", Status.AWAITING_USER)],
    CampaignState.AWAITING_ADMIN_CONSENT: [("v2", "active", Status.AWAITING_ADMIN_CONSENT)],
    CampaignState.FAILED: [("v2", "error", Status.FAILED)],
    CampaignState.DONE: [("v3", "active", Status.DONE)],
    CampaignState.RECONNECT: [("v3", "reconnect", Status.DONE)],
}
PROVIDERS = ["imap", "microsoft", "exchange"]
DOMAINS = ["contoso.com", "fabrikam.de", "gmx.de"]


def seed(per_recipe: int) -> dict:
    """per_recipe accounts per recipe, spread over providers and domains; returns the expected counts.

    Bulk inserts, so a few hundred accounts cost a handful of queries.
    """
    User = get_user_model()
    stamp, first_user = MailAccount.objects.count(), User.objects.count()
    users = User.objects.bulk_create([User(username=f"u{first_user + i}@example.com",
                                           email=f"u{first_user + i}@example.com") for i in range(20)])
    the_campaign = current_campaign()
    accounts, plan = [], []
    expected = {"state": {}, "provider": {}, "domain": {}, "never": 0}
    n = stamp
    for state, recipes in RECIPES.items():
        for engine, status, migration_status in recipes:
            for _i in range(per_recipe):
                provider, domain = PROVIDERS[n % 3], DOMAINS[(n // 3) % 3]
                accounts.append(MailAccount(owner=users[n % 20], address=f"konto{n}@{domain}", provider_kind=provider,
                                            engine=engine, status=status))
                plan.append(migration_status)
                expected["state"][state] = expected["state"].get(state, 0) + 1
                key = (provider, state)
                expected["provider"][key] = expected["provider"].get(key, 0) + 1
                key = (domain, state)
                expected["domain"][key] = expected["domain"].get(key, 0) + 1
                expected["never"] += migration_status is None
                n += 1
    accounts = MailAccount.objects.bulk_create(accounts)
    migrations = []
    for account, migration_status in zip(accounts, plan):
        if migration_status is None:
            continue
        if migration_status != Status.FAILED:  # an older failed attempt must not count: the latest decides
            migrations.append(Migration(account=account, user_id=account.owner_id, campaign=the_campaign,
                                        provider_kind=account.provider_kind, status=Status.FAILED,
                                        error_code="auth_failed"))
        migrations.append(Migration(account=account, user_id=account.owner_id, campaign=the_campaign,
                                    provider_kind=account.provider_kind, status=migration_status,
                                    error_code="unreachable" if migration_status == Status.FAILED else ""))
    # created_at is auto_now_add: bulk_create in this order makes the second one of an account the latest.
    Migration.objects.bulk_create(migrations)
    return expected


def _order_latest_last():
    """bulk_create gives one timestamp to all rows: move each account's older migration one minute back."""
    for account_id in Migration.objects.values_list("account_id", flat=True).distinct():
        rows = list(Migration.objects.filter(account_id=account_id).order_by("pk"))
        for age, row in enumerate(reversed(rows)):
            Migration.objects.filter(pk=row.pk).update(created_at=row.created_at - timedelta(minutes=age))


@pytest.fixture
def seeded(db):
    expected = seed(per_recipe=20)  # 9 recipes x 20 = 180 accounts
    _order_latest_last()
    return expected


@pytest.mark.django_db
def test_it_counts_every_state_against_the_rows(admin_client, seeded):
    response = admin_client.get(reverse(DASHBOARD))
    assert response.status_code == 200
    states = {s["key"]: s["count"] for s in response.context["states"]}
    assert states == seeded["state"]
    assert sum(states.values()) == MailAccount.objects.count() == 180
    overview = response.context["overview"]
    assert overview.never_started == seeded["never"] == 20
    assert overview.on_v2 == MailAccount.objects.filter(engine="v2").count() == 140


@pytest.mark.django_db
def test_every_state_number_links_to_a_list_of_exactly_that_many(admin_client, seeded):
    response = admin_client.get(reverse(DASHBOARD))
    html = response.content.decode()
    for state in response.context["states"]:
        assert f'href="{state["url"]}"' in html.replace("&amp;", "&")
        listed = admin_client.get(state["url"])
        assert listed.status_code == 200
        assert listed.context["cl"].result_count == state["count"], state["key"]
    never = admin_client.get(response.context["never_url"])
    assert never.context["cl"].result_count == 20
    on_v2 = admin_client.get(response.context["on_v2_url"])
    assert on_v2.context["cl"].result_count == 140


@pytest.mark.django_db
def test_it_counts_per_provider_and_per_domain(admin_client, seeded):
    response = admin_client.get(reverse(DASHBOARD))
    labels = [key for key, _label in CampaignState.CHOICES]
    for row in response.context["providers"]:
        kind = {"IMAP": "imap", "Microsoft 365 / Outlook.com": "microsoft", "Microsoft Exchange": "exchange"}[
            str(row["label"])]
        assert [c["count"] for c in row["cells"]] == [seeded["provider"].get((kind, s), 0) for s in labels]
        # the cell's link lists exactly those accounts
        cell = row["cells"][labels.index(CampaignState.FAILED)]
        assert admin_client.get(cell["url"]).context["cl"].result_count == cell["count"]
    domains = {row["domain"]: row for row in response.context["domains"]}
    assert set(domains) == set(DOMAINS)
    for domain, row in domains.items():
        assert [c["count"] for c in row["cells"]] == [seeded["domain"].get((domain, s), 0) for s in labels]
        assert admin_client.get(row["url"]).context["cl"].result_count == sum(c["count"] for c in row["cells"])


@pytest.mark.django_db
def test_it_shows_the_tenants_consent_status(admin_client, seeded):
    TenantConsent.objects.create(tenant="contoso.com", status="requested")
    html = admin_client.get(reverse(DASHBOARD)).content.decode()
    row = html.split('data-domain="contoso.com"')[1].split("</tr>")[0]
    assert "Angefragt" in row


@pytest.mark.django_db
def test_it_needs_the_same_number_of_queries_for_ten_times_the_accounts(admin_client):
    seed(per_recipe=2)
    _order_latest_last()
    with CaptureQueriesContext(connection) as small:
        assert admin_client.get(reverse(DASHBOARD)).status_code == 200
    seed(per_recipe=20)
    _order_latest_last()
    with CaptureQueriesContext(connection) as large:
        assert admin_client.get(reverse(DASHBOARD)).status_code == 200
    assert len(large) == len(small)
    # Sessions come from the cache (cached_db); two of them are the sync backlog's.
    assert len(small) == 13, [q["sql"][:120] for q in small.captured_queries]


@pytest.mark.django_db
def test_it_lists_the_oldest_stuck_migrations_first(admin_client, user, make_account):
    now = timezone.now()
    rows = []
    for i, age in enumerate([2, 30, 5]):
        account = make_account(user, f"anna{i}@gmx.de")
        migration = Migration.objects.create(account=account, user=user, campaign=current_campaign(),
                                             provider_kind="imap", status=Status.AWAITING_USER)
        Migration.objects.filter(pk=migration.pk).update(updated_at=now - timedelta(days=age))
        rows.append(migration)
    response = admin_client.get(reverse(DASHBOARD))
    assert [m.pk for m in response.context["stuck"]] == [rows[1].pk, rows[2].pk, rows[0].pk]
    stuck = admin_client.get(reverse(LIST), {"stuck_days": "3"})
    assert {a.address for a in stuck.context["cl"].result_list} == {"anna1@gmx.de", "anna2@gmx.de"}


@pytest.mark.django_db
def test_it_is_for_staff_only(client, user):
    client.force_login(user)
    response = client.get(reverse(DASHBOARD))
    assert response.status_code == 302 and "/admin/login/" in response.url


@pytest.mark.django_db
def test_the_admin_index_links_the_dashboard(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert f'href="{reverse(DASHBOARD)}"' in html
    assert "V3-Migrationsportal – Verwaltung" in html


# --- the burn-down ------------------------------------------------------------------------------------------


@pytest.fixture
def moving_campaign(user, make_account):
    """10 accounts; the campaign started 9 days ago; 2 accounts moved to V3 on each of the last 3 days."""
    today = timezone.localdate()
    the_campaign = current_campaign()
    accounts = [make_account(user, f"k{i}@firma.de") for i in range(10)]
    first = Migration.objects.create(account=accounts[0], user=user, campaign=the_campaign, provider_kind="imap",
                                     status=Status.DONE)
    Migration.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(days=9))
    noon = timezone.localtime().replace(hour=12, minute=0)
    for i, days_ago in enumerate([2, 2, 1, 1, 0, 0]):
        MailAccount.objects.filter(pk=accounts[i].pk).update(engine="v3", v2_stopped_at=noon - timedelta(days=days_ago))
    return today, the_campaign


@pytest.mark.django_db
def test_the_burn_down_counts_accounts_on_v2_per_day(moving_campaign):
    today, the_campaign = moving_campaign
    bd = campaign.burn_down(the_campaign, today=today)
    assert bd.start == today - timedelta(days=9)
    values = [value for _day, value in bd.actual]
    assert len(values) == 10 and values[-1] == 4  # today: what is really left
    assert values == [10] * 7 + [8, 6, 4]
    assert bd.pace == pytest.approx(6 / 7)
    # 4 left at 6/7 a day: zero on the fifth day, before the shutdown 30 days away
    assert bd.done_on == today + timedelta(days=5)
    assert bd.projection[0] == (today, 4)


@pytest.mark.django_db
def test_the_burn_down_says_when_the_pace_is_too_slow(user, make_account):
    today = timezone.localdate()
    the_campaign = current_campaign()
    for i in range(60):
        make_account(user, f"k{i}@firma.de")
    moved = make_account(user, "schon@firma.de", engine="v3")
    MailAccount.objects.filter(pk=moved.pk).update(v2_stopped_at=timezone.now())
    Migration.objects.create(account=moved, user=user, campaign=the_campaign, provider_kind="imap", status=Status.DONE)
    bd = campaign.burn_down(the_campaign, today=today)
    assert bd.done_on is None
    assert bd.projection[-1][0] == the_campaign.v2_shutdown
    assert bd.remaining_at_shutdown == 60 - 30  # one a day for the 30 days left


@pytest.mark.django_db
def test_the_chart_marks_both_dates_and_today_with_labels(admin_client, moving_campaign):
    today, the_campaign = moving_campaign
    html = admin_client.get(reverse(DASHBOARD)).content.decode()
    svg = html.split('<svg class="burndown"')[1].split("</svg>")[0]
    assert f"Migrieren bis {the_campaign.migrate_by:%d.%m.}" in svg
    assert f"V2-Abschaltung {the_campaign.v2_shutdown:%d.%m.}" in svg and "Heute" in svg
    assert svg.count('data-testid="marker"') == 3
    # told apart by dash patterns and a legend, not by colour alone
    assert 'class="projection" stroke-dasharray="8 5"' in svg and "Tatsächlich" in svg and "Prognose" in svg
    assert svg.count("<circle") == 10 + 1  # one point per day, one in the legend
    assert "Bei diesem Tempo sind alle Konten am" in html


@pytest.mark.django_db
def test_it_speaks_english_to_english_staff(admin_client, moving_campaign):
    admin_client.post(reverse("set_language"), {"language": "en", "next": "/admin/"})
    html = admin_client.get(reverse(DASHBOARD)).content.decode()
    assert "4 of 10 accounts still on V2." in html and "Burn-down: accounts on V2" in html
    assert "Migrate by" in html and "V2 shutdown" in html and "Projection at the current pace" in html
    assert "Waiting for administrator consent" in html and "Noch" not in html
