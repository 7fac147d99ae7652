"""The orange V2 deadline banner: who sees it, what it says, what it costs, when it changes."""

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from migration.handoff import hand_over
from migration.models import Migration
from migration.selectors import current_campaign, invalidate_campaign
from portal.banner import banner_for
from sync import crypto
from sync import runs as sync_runs
from sync import services as sync_services
from sync import v2
from sync.models import AccountStatus, MailAccount
from sync.services import banner_cache_key

SHELL_PAGES = ["dashboard", "message-list", "settings-mail"]
BANNER = 'data-testid="v2-banner"'


@pytest.fixture
def set_campaign(django_capture_on_commit_callbacks):
    """Move the active campaign's dates, relative to today, the way staff do in the admin."""

    def move(*, migrate_by_days: int, shutdown_days: int):
        today = timezone.localdate()
        campaign = current_campaign()
        campaign.migrate_by = today + timedelta(days=migrate_by_days)
        campaign.v2_shutdown = today + timedelta(days=shutdown_days)
        with django_capture_on_commit_callbacks(execute=True):
            campaign.save()
            invalidate_campaign()
        return campaign

    return move


def settings_link(account) -> str:
    return f'href="{reverse("settings-mail")}#account-{account.pk}"'


def page_html(client, name="dashboard") -> str:
    response = client.get(reverse(name))
    assert response.status_code == 200
    return response.content.decode()


# --- who sees it --------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("page", SHELL_PAGES)
def test_it_shows_no_banner_without_v2_accounts(signed_in, user, other_user, make_account, page):
    make_account(user, "anna@firma.de", engine="v3")
    make_account(other_user, "bernd@gmx.de")  # someone else's V2 account is not Anna's business
    assert BANNER not in page_html(signed_in, page)
    assert banner_for(user) is None


@pytest.mark.django_db
def test_it_shows_no_banner_to_anonymous_visitors(client, user, make_account):
    make_account(user, "anna@gmx.de")
    html = client.get(reverse("account_login")).content.decode()
    assert "Anmelden" in html and BANNER not in html


@pytest.mark.django_db
@pytest.mark.parametrize("page", SHELL_PAGES)
def test_it_shows_the_banner_on_every_shell_page(signed_in, user, make_account, page):
    gmx = make_account(user, "anna@gmx.de")
    web = make_account(user, "anna@web.de")
    firma = make_account(user, "anna@firma.de", engine="v3")
    campaign = current_campaign()

    html = page_html(signed_in, page)

    assert html.count(BANNER) == 1
    assert campaign.migrate_by.strftime("%d.%m.%Y") in html
    assert campaign.v2_shutdown.strftime("%d.%m.%Y") in html
    # One link per V2 address, to its row on the settings page; none for the V3 account.
    assert html.count(settings_link(gmx)) == 1
    assert html.count(settings_link(web)) == 1
    assert settings_link(firma) not in html
    banner = html[html.index(BANNER):html.index("</aside>")]
    assert ">anna@gmx.de</a>" in banner and ">anna@web.de</a>" in banner
    assert "anna@firma.de" not in banner


@pytest.mark.django_db
def test_it_lists_the_v2_addresses_in_order(user, make_account):
    web = make_account(user, "anna@web.de")
    gmx = make_account(user, "anna@gmx.de")
    assert banner_for(user).accounts == [(gmx.pk, "anna@gmx.de"), (web.pk, "anna@web.de")]


# --- what it says -------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("migrate_by_days, shutdown_days, level", [
    (14, 30, "due"),
    (0, 30, "due"),  # the deadline day itself still counts
    (-1, 30, "overdue"),
    (-10, 1, "overdue"),
    (-10, 0, "stopped"),  # V2 is off from the shutdown day on
    (-30, -5, "stopped"),
])
def test_it_picks_the_level_by_date(signed_in, user, make_account, set_campaign, migrate_by_days, shutdown_days,
                                    level):
    make_account(user, "anna@gmx.de")
    set_campaign(migrate_by_days=migrate_by_days, shutdown_days=shutdown_days)

    assert banner_for(user).level == level
    html = page_html(signed_in)
    assert f'class="banner banner-{level}"' in html


@pytest.mark.django_db
def test_it_asks_to_migrate_by_the_deadline_before_it(signed_in, user, make_account, set_campaign):
    make_account(user, "anna@gmx.de")
    campaign = set_campaign(migrate_by_days=5, shutdown_days=20)
    html = page_html(signed_in)
    assert (f"Bitte migrieren Sie Ihre E-Mail-Synchronisierung bis zum {campaign.migrate_by:%d.%m.%Y} zu V3. "
            f"Am {campaign.v2_shutdown:%d.%m.%Y} wird V2 abgeschaltet") in html
    assert "abgelaufen" not in html


@pytest.mark.django_db
def test_it_says_the_deadline_passed_after_it(signed_in, user, make_account, set_campaign):
    make_account(user, "anna@gmx.de")
    campaign = set_campaign(migrate_by_days=-3, shutdown_days=10)
    html = page_html(signed_in)
    assert f"Die Frist zur Migration ist am {campaign.migrate_by:%d.%m.%Y} abgelaufen." in html
    assert f"am {campaign.v2_shutdown:%d.%m.%Y} wird V2 abgeschaltet" in html


@pytest.mark.django_db
def test_it_says_v2_is_off_after_the_shutdown(signed_in, user, make_account, set_campaign):
    make_account(user, "anna@gmx.de")
    campaign = set_campaign(migrate_by_days=-20, shutdown_days=-1)
    html = page_html(signed_in)
    assert f"Die V2-Synchronisierung wurde am {campaign.v2_shutdown:%d.%m.%Y} abgeschaltet." in html
    assert "kommen keine neuen E-Mails mehr im CRM an" in html


@pytest.mark.django_db
@pytest.mark.parametrize("shutdown_days, polled", [(1, True), (0, False), (-7, False)])
def test_it_means_what_it_says_no_v2_poll_after_the_shutdown(user, make_account, set_campaign, monkeypatch,
                                                             shutdown_days, polled):
    account = make_account(user, "anna@gmx.de", imap_host="imap.gmx.net", imap_port=993, imap_security="ssl")
    set_campaign(migrate_by_days=shutdown_days - 1, shutdown_days=shutdown_days)
    polls = []
    monkeypatch.setattr(v2, "poll", lambda acc: polls.append(acc.pk) or 1)

    due = sync_runs.accounts_to_sync()
    added = sync_runs.sync_account(account.pk)

    assert (account.pk in due) is polled
    assert (polls == [account.pk]) is polled
    assert added == (1 if polled else 0)
    account.refresh_from_db()
    assert account.status == (AccountStatus.ACTIVE if polled else AccountStatus.STOPPED)


# --- what it costs ------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("engine", ["v2", "v3"])
def test_it_costs_no_query_once_warm(user, make_account, django_assert_num_queries, engine):
    make_account(user, "anna@gmx.de", engine=engine)
    with CaptureQueriesContext(connection) as cold:
        banner_for(user)
    assert len(cold) >= 1  # the first call reads the database ...

    with django_assert_num_queries(0):
        banner = banner_for(user)  # ... later calls only the cache
    assert (banner is not None) is (engine == "v2")


@pytest.mark.django_db
def test_it_adds_no_query_to_a_page(client, user, other_user, make_account):
    make_account(user, "anna@gmx.de", engine="v2")
    make_account(other_user, "bernd@firma.de", engine="v3")

    def count_dashboard_queries(person):
        client.force_login(person)
        client.get(reverse("dashboard"))  # warm-up
        with CaptureQueriesContext(connection) as queries:
            html = page_html(client)
        return html, queries

    with_banner, with_queries = count_dashboard_queries(user)
    without_banner, without_queries = count_dashboard_queries(other_user)

    assert BANNER in with_banner and BANNER not in without_banner
    assert len(with_queries) == len(without_queries)
    assert not [q["sql"] for q in with_queries if "migration_campaign" in q["sql"] or '."engine" = ' in q["sql"]]


@pytest.mark.django_db
def test_it_costs_the_same_queries_as_a_page_without_the_banner(client, user, make_account, settings):
    make_account(user, "anna@gmx.de")
    client.force_login(user)

    def count_dashboard_queries():
        client.get(reverse("dashboard"))  # warm-up
        with CaptureQueriesContext(connection) as queries:
            html = page_html(client)
        return html, len(queries)

    html, with_banner = count_dashboard_queries()
    settings.TEMPLATES = [{
        **settings.TEMPLATES[0],
        "OPTIONS": {"context_processors": [
            p for p in settings.TEMPLATES[0]["OPTIONS"]["context_processors"] if p != "portal.context_processors.banner"
        ]},
    }]
    baseline_html, baseline = count_dashboard_queries()

    assert BANNER in html and BANNER not in baseline_html
    assert with_banner == baseline


# --- when it changes ----------------------------------------------------------------------------------------


def _ready_for_handoff(account, user) -> Migration:
    return Migration.objects.create(
        account=account, user=user, campaign=current_campaign(), provider_kind="imap", status="handing_over",
        connection={"host": "imap.gmx.net", "port": 993, "security": "ssl", "username": account.address},
        secret_encrypted=crypto.encrypt_json({"password": "Post-Passwort-1"}),
    )


@pytest.mark.django_db
def test_it_drops_the_cached_accounts_when_the_handoff_commits(user, make_account, django_capture_on_commit_callbacks):
    gmx = make_account(user, "anna@gmx.de")
    web = make_account(user, "anna@web.de")
    migration = _ready_for_handoff(gmx, user)
    assert [address for _, address in banner_for(user).accounts] == ["anna@gmx.de", "anna@web.de"]

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert hand_over(migration)
    # Until the commit the cache is untouched: a request in between cannot re-cache the old engine.
    assert MailAccount.objects.get(pk=gmx.pk).engine == "v3"
    assert len(banner_for(user).accounts) == 2
    assert callbacks

    for callback in callbacks:
        callback()
    assert banner_for(user).accounts == [(web.pk, "anna@web.de")]


@pytest.mark.django_db
def test_it_disappears_when_the_last_v2_account_is_handed_over(signed_in, user, make_account,
                                                               django_capture_on_commit_callbacks):
    gmx = make_account(user, "anna@gmx.de")
    migration = _ready_for_handoff(gmx, user)
    assert BANNER in page_html(signed_in)

    with django_capture_on_commit_callbacks(execute=True):
        hand_over(migration)

    assert BANNER not in page_html(signed_in)


@pytest.mark.django_db
def test_it_appears_when_staff_add_a_v2_account_in_the_admin(admin_client, signed_in, user,
                                                             django_capture_on_commit_callbacks):
    assert BANNER not in page_html(signed_in)  # caches "no V2 accounts"

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:sync_mailaccount_add"), {
            "owner": user.pk, "address": "anna@gmx.de", "provider_kind": "imap", "provider_name": "gmx",
            "status": "active", "imap_host": "", "imap_port": "", "imap_security": "", "username": "",
            "folders-TOTAL_FORMS": "0", "folders-INITIAL_FORMS": "0",
            "folders-MIN_NUM_FORMS": "0", "folders-MAX_NUM_FORMS": "1000",
        })
    assert response.status_code == 302, response.content.decode()[:2000]

    account = MailAccount.objects.get(address="anna@gmx.de")
    assert settings_link(account) in page_html(signed_in)


@pytest.mark.django_db
def test_it_forgets_an_account_staff_delete_in_the_admin(admin_client, user, make_account,
                                                         django_capture_on_commit_callbacks):
    gmx = make_account(user, "anna@gmx.de")
    assert banner_for(user) is not None

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:sync_mailaccount_delete", args=[gmx.pk]), {"post": "yes"})
    assert response.status_code == 302

    assert banner_for(user) is None


@pytest.mark.django_db
def test_it_forgets_accounts_staff_delete_in_bulk(admin_client, user, make_account,
                                                  django_capture_on_commit_callbacks):
    gmx = make_account(user, "anna@gmx.de")
    assert banner_for(user) is not None

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:sync_mailaccount_changelist"), {
            "action": "delete_selected", "_selected_action": [gmx.pk], "post": "yes",
        })
    assert response.status_code == 302
    assert not MailAccount.objects.filter(pk=gmx.pk).exists()

    assert banner_for(user) is None


@pytest.mark.django_db
def test_it_moves_with_an_account_staff_give_to_someone_else(admin_client, user, other_user, make_account,
                                                             django_capture_on_commit_callbacks):
    gmx = make_account(user, "shared@gmx.de")
    assert banner_for(user) is not None and banner_for(other_user) is None

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:sync_mailaccount_change", args=[gmx.pk]), {
            "owner": other_user.pk, "address": gmx.address, "provider_kind": "imap", "provider_name": "",
            "status": "active", "imap_host": "", "imap_port": "", "imap_security": "", "username": "",
            "folders-TOTAL_FORMS": "0", "folders-INITIAL_FORMS": "0",
            "folders-MIN_NUM_FORMS": "0", "folders-MAX_NUM_FORMS": "1000",
        })
    assert response.status_code == 302, response.content.decode()[:2000]

    assert banner_for(user) is None
    assert banner_for(other_user).accounts == [(gmx.pk, "shared@gmx.de")]


@pytest.mark.django_db
def test_it_shows_new_dates_once_staff_edit_the_campaign(admin_client, signed_in, user, make_account,
                                                         django_capture_on_commit_callbacks):
    make_account(user, "anna@gmx.de")
    campaign = current_campaign()
    assert f"{campaign.migrate_by:%d.%m.%Y}" in page_html(signed_in)
    new_deadline = timezone.localdate() + timedelta(days=3)
    new_shutdown = timezone.localdate() + timedelta(days=9)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:migration_campaign_change", args=[campaign.pk]), {
            "name": campaign.name, "migrate_by": f"{new_deadline:%d.%m.%Y}",
            "v2_shutdown": f"{new_shutdown:%d.%m.%Y}", "is_active": "on",
            # the reminder cadence, as the form shows it
            "reminder_days_before": campaign.reminder_days_before, "reminder_min_days": campaign.reminder_min_days,
            "reminder_day_after": "on", "reminder_on_shutdown": "on",
        })
    assert response.status_code == 302, response.content.decode()[:2000]

    html = page_html(signed_in)
    assert f"bis zum {new_deadline:%d.%m.%Y} zu V3" in html
    assert f"Am {new_shutdown:%d.%m.%Y} wird V2 abgeschaltet" in html


def test_it_keys_the_cache_per_user():
    assert sync_services.banner_cache_key(1) != sync_services.banner_cache_key(11)
    cache.set(sync_services.banner_cache_key(1), [(5, "a@b.de")])
    assert cache.get(sync_services.banner_cache_key(11)) is None


# --- the rendered banner kept per process (CACHES["fragments"]) -------------------------------------------


def banner_html(client) -> str:
    html = page_html(client)
    start = html.find('data-testid="v2-banner"')
    return html[start:html.index("</aside>", start)] if start >= 0 else ""


@pytest.mark.django_db
def test_its_kept_copy_follows_the_dates_the_accounts_and_the_language(signed_in, user, make_account,
                                                                        set_campaign):
    gmx = make_account(user, "anna@gmx.de")
    campaign = set_campaign(migrate_by_days=5, shutdown_days=20)
    first = banner_html(signed_in)
    assert banner_html(signed_in) == first and f"{campaign.migrate_by:%d.%m.%Y}" in first
    campaign = set_campaign(migrate_by_days=-3, shutdown_days=10)  # a new deadline, a new level
    assert "abgelaufen" in banner_html(signed_in) and f"{campaign.migrate_by:%d.%m.%Y}" in banner_html(signed_in)
    make_account(user, "anna@web.de")
    cache.delete(banner_cache_key(user.pk))  # as the services do when an account is added
    assert "anna@web.de" in banner_html(signed_in) and f"#account-{gmx.pk}" in banner_html(signed_in)
    signed_in.cookies["django_language"] = "en"
    english = banner_html(signed_in)
    assert "anna@web.de" in english and "abgelaufen" not in english and english != first


@pytest.mark.django_db
def test_its_kept_copy_is_never_another_users(client, user, other_user, make_account):
    make_account(user, "anna@gmx.de")
    make_account(other_user, "bernd@gmx.de")
    client.force_login(user)
    assert "anna@gmx.de" in banner_html(client)
    client.force_login(other_user)
    theirs = banner_html(client)
    assert "bernd@gmx.de" in theirs and "anna@gmx.de" not in theirs
