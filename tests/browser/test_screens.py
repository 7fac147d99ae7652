"""Every page and state of the portal in Chromium, on a phone and on a desktop.

Each screen is checked at 360, 390 and 1280 px for horizontal overflow (the page must never scroll
sideways), with axe-core for WCAG 2.2 A/AA problems (none serious or critical), and photographed at
390 and 1280 px into test-artifacts/screens/. The states are made directly in the database: what the
worker does to reach them is tested elsewhere; here it is what people see.

Covered: the portal's pages (overview, e-mails, settings, every migration step, the cancel question),
allauth's pages (sign-in, sign-out, password reset in each step, password change, e-mail addresses,
re-authentication, closed sign-up, inactive account) and the locked-out sign-in. The campaign dashboard
and its list are Django admin pages for support staff at their desks: checked at 1280 px (overflow and
axe-core), not at phone widths, because Django's admin is not built for phones.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from migration.models import Migration, Status
from migration.selectors import current_campaign, invalidate_campaign
from sync.models import MessageBody, SyncedMessage
from tests.browser.a11y import axe_violations, horizontal_overflow, structure_problems
from tests.browser.conftest import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

WIDTHS = (1280, 390, 360)
PHOTOGRAPHED = (1280, 390)
LONG_ERROR_CODE = "ews_mailbox_denied"  # the longest message: it must wrap, not widen the table


def _migration(account, status, provider_kind="imap", **fields):
    return Migration.objects.create(account=account, user=account.owner, campaign=current_campaign(),
                                    status=status, provider_kind=provider_kind, **fields)


@pytest.fixture
def screens(live_server, user, make_account, settings):
    """{name: path} of every screen a signed-in user meets, with the data that makes each one full."""
    settings.SITE_URL = live_server.url
    gmx = make_account(user, "anna.beispiel-mit-langem-namen@gmx.de")
    ionos = make_account(user, "anna@ionos-kunde.de")
    exchange = make_account(user, "anna@firma-onprem.de", provider_kind="exchange")
    ms_user = make_account(user, "anna@contoso.de", provider_kind="microsoft")
    ms_admin = make_account(user, "anna@fabrikam.de", provider_kind="microsoft")
    failed = make_account(user, "anna@web.de")
    done = make_account(user, "anna@t-online.de", engine="v3", last_sync_at=timezone.now())
    reconnect = make_account(user, "anna@outlook-firma.de", engine="v3", provider_kind="imap", status="reconnect",
                             last_sync_error=LONG_ERROR_CODE, last_sync_at=timezone.now())
    form = _migration(gmx, Status.AWAITING_USER, detected={
        "host": "imap.gmx.net", "port": 993, "security": "ssl", "username": gmx.address,
        "hints": ["Bei GMX muss der Zugriff per IMAP in den Einstellungen des Postfachs erlaubt sein."]})
    choice = _migration(ionos, Status.AWAITING_USER, detected={"candidates": ["microsoft365", "ionos"]})
    ews = _migration(exchange, Status.AWAITING_USER, provider_kind="exchange")
    ms_sign_in = _migration(ms_user, Status.AWAITING_USER, provider_kind="microsoft")
    ms_consent = _migration(ms_admin, Status.AWAITING_ADMIN_CONSENT, provider_kind="microsoft")
    fail = _migration(failed, Status.FAILED, error_code="auth_failed", finished_at=timezone.now())
    finished = _migration(done, Status.DONE, finished_at=timezone.now())
    now = timezone.now()
    for n in range(3):
        message = SyncedMessage.objects.create(
            account=done, dedup_key=f"k{n}", folder="INBOX", imported_by="v3", received_at=now - timedelta(hours=n),
            subject=f"Angebot Nr. {n} für die Erweiterung der Lagerhalle in Musterstadt mit sehr langem Betreff",
            sender="Sachbearbeitung Einkauf <einkauf.sachbearbeitung@lieferant-mit-langem-namen.example>",
            recipients="anna@t-online.de", sent_at=now - timedelta(hours=n))
    MessageBody.objects.create(message=message, text="Guten Tag,\n\nanbei das Angebot.\n\nMit freundlichen Grüßen")
    return {
        "dashboard": "/",
        "emails": "/emails/",
        "email": f"/emails/{message.pk}/",
        "settings": "/einstellungen/",
        "settings-mail": "/einstellungen/email-synchronisierung/",
        "imap-form": f"/migration/{form.pk}/",
        "ionos-choice": f"/migration/{choice.pk}/",
        "cancel": f"/migration/{form.pk}/abbrechen/",
        "picker": f"/migration/{form.pk}/anbieter/",
        "all-providers": f"/migration/{form.pk}/anbieter/alle/",
        "exchange-form": f"/migration/{ews.pk}/",
        "microsoft-sign-in": f"/migration/{ms_sign_in.pk}/",
        "microsoft-admin-consent": f"/migration/{ms_consent.pk}/",
        "failed": f"/migration/{fail.pk}/",
        "done": f"/migration/{finished.pk}/",
        "new-password": f"/migration/konto/{reconnect.pk}/passwort/",
        # allauth's pages for a signed-in user
        "sign-out": "/accounts/logout/",
        "password-change": "/accounts/password/change/",
        "email-addresses": "/accounts/email/",
        "reauthenticate": "/accounts/reauthenticate/",
    }


ANONYMOUS = {
    "login": "/accounts/login/",
    "password-reset": "/accounts/password/reset/",
    "password-reset-sent": "/accounts/password/reset/done/",
    "password-reset-link-invalid": "/accounts/password/reset/key/zz-not-a-key/",
    "password-reset-done": "/accounts/password/reset/key/done/",
    "sign-up-closed": "/accounts/signup/",
    "account-inactive": "/accounts/inactive/",
}


def _check(page, url, name, width, artifacts, problems):
    page.set_viewport_size({"width": width, "height": 800})
    response = page.goto(url)
    assert response.status < 400, (name, response.status)
    overflow = horizontal_overflow(page)
    if overflow:
        problems.append(f"{name} @ {width}px scrolls sideways: {overflow}")
    problems.extend(f"{name} @ {width}px: {p}" for p in structure_problems(page, phone=width < 400))
    if width in PHOTOGRAPHED:
        page.screenshot(path=str(artifacts / f"{name}-{width}.png"), full_page=True)
        for violation in axe_violations(page):
            problems.append(f"{name} @ {width}px axe: {violation}")


@pytest.fixture
def screen_artifacts(artifacts):
    folder = artifacts / "screens"
    folder.mkdir(exist_ok=True)
    return folder


def test_every_screen_fits_a_phone_and_passes_axe(page, live_server, user, screens, screen_artifacts):
    problems = []
    for name, path in ANONYMOUS.items():
        for width in WIDTHS:
            _check(page, live_server.url + path, name, width, screen_artifacts, problems)
    sign_in(page, live_server, user.email)
    for name, path in screens.items():
        for width in WIDTHS:
            _check(page, live_server.url + path, name, width, screen_artifacts, problems)

    # The login form starts at the password (the rest is prefilled) ...
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(live_server.url + screens["imap-form"])
    assert page.evaluate("document.activeElement.name") == "password"
    # ... and, sent back with an error, lands there again with the message read out.
    page.get_by_role("button", name="Verbinden und migrieren").click()
    page.wait_for_load_state()
    assert page.evaluate("document.activeElement.name") == "password"
    described = page.locator("#id_password").get_attribute("aria-describedby")
    assert page.locator(f"#{described}").inner_text().strip()
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})
        if overflow := horizontal_overflow(page):
            problems.append(f"imap-form-error @ {width}px scrolls sideways: {overflow}")
        problems.extend(f"imap-form-error @ {width}px: {p}" for p in structure_problems(page, phone=width < 400))
        if width in PHOTOGRAPHED:
            page.screenshot(path=str(screen_artifacts / f"imap-form-error-{width}.png"), full_page=True)
            problems.extend(f"imap-form-error @ {width}px axe: {v}" for v in axe_violations(page))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("migrate_by_days, shutdown_days, level", [
    (14, 30, "due"), (-1, 30, "overdue"), (-10, -1, "stopped"),
])
def test_the_banner_reads_well_in_every_state(page, live_server, user, make_account, screen_artifacts,
                                              migrate_by_days, shutdown_days, level):
    make_account(user, "anna@gmx.de")
    make_account(user, "anna.mit-einem-sehr-langen-namen@web.de")
    campaign = current_campaign()
    campaign.migrate_by = timezone.localdate() + timedelta(days=migrate_by_days)
    campaign.v2_shutdown = timezone.localdate() + timedelta(days=shutdown_days)
    campaign.save()
    invalidate_campaign()
    sign_in(page, live_server, user.email)
    problems = []
    for width in WIDTHS:
        _check(page, live_server.url + "/", f"banner-{level}", width, screen_artifacts, problems)
    assert page.locator(f".banner-{level}").count() == 1
    assert not problems, "\n".join(problems)


def _check_shown(page, name, widths, artifacts, problems, *, phone_rules=True):
    """_check for a page already shown (a form's answer): resized, not reloaded."""
    for width in widths:
        page.set_viewport_size({"width": width, "height": 800})
        if overflow := horizontal_overflow(page):
            problems.append(f"{name} @ {width}px scrolls sideways: {overflow}")
        if phone_rules:
            problems.extend(f"{name} @ {width}px: {p}" for p in structure_problems(page, phone=width < 400))
        if width in PHOTOGRAPHED:
            page.screenshot(path=str(artifacts / f"{name}-{width}.png"), full_page=True)
            problems.extend(f"{name} @ {width}px axe: {v}" for v in axe_violations(page))


def test_the_locked_out_sign_in_fits_a_phone_and_passes_axe(page, live_server, user, settings, screen_artifacts):
    settings.AXES_FAILURE_LIMIT = 1
    page.goto(live_server.url + ANONYMOUS["login"])
    for _ in range(2):  # the first failure locks, the next attempt is refused with the page
        page.locator("input[name=login]").fill(user.email)
        page.locator("input[name=password]").fill("falsch")
        page.locator("form:has(input[name=login]) [type=submit]").click()
        page.wait_for_load_state()
        if page.get_by_test_id("login-locked").count():
            break
    assert page.get_by_test_id("login-locked").count() == 1
    problems = []
    _check_shown(page, "login-locked", WIDTHS, screen_artifacts, problems)
    assert not problems, "\n".join(problems)


def test_the_campaign_dashboard_fits_a_desktop_and_passes_axe(page, live_server, user, make_account, settings,
                                                             django_user_model, screen_artifacts):
    """Support staff's admin pages: 1280 px only (see the module docstring)."""
    from tests.browser.conftest import PASSWORD
    django_user_model.objects.create_user(username="support@example.com", email="support@example.com",
                                          password=PASSWORD, is_staff=True, is_superuser=True)
    for n, status in enumerate([None, Status.AWAITING_USER, Status.AWAITING_ADMIN_CONSENT, Status.FAILED]):
        account = make_account(user, f"konto{n}@gmx.de")
        if status:
            _migration(account, status, error_code="auth_failed" if status == Status.FAILED else "")
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.locator("input[name=username]").fill("support@example.com")
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("input[type=submit]").click()
    page.wait_for_load_state()
    problems = []
    for name, path in {"campaign-dashboard": "/admin/migration/campaignaccount/dashboard/",
                       "campaign-list": "/admin/migration/campaignaccount/"}.items():
        page.set_viewport_size({"width": 1280, "height": 800})
        response = page.goto(live_server.url + path)
        assert response.status == 200, (name, response.status)
        _check_shown(page, name, (1280,), screen_artifacts, problems, phone_rules=False)
    assert page.get_by_test_id("summary").count() == 0  # the list, last: the dashboard's summary is gone
    assert not problems, "\n".join(problems)
