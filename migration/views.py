import functools

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import get_language, gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from migration import errors, row_actions, selectors, services
from migration.exchange import online as exchange_online
from migration.exchange.forms import ExchangeCredentialsForm
from migration.forms import ImapCredentialsForm
from migration.mask import CHOICES_BY_KEY, ChoiceRefused, choose_provider, unavailable
from migration.google import flow as google_flow
from migration.google import views as google_views
from migration.microsoft import views as microsoft_views
from migration.models import Status
from sync import attempt_queue, egress
from sync.models import AccountStatus, Engine, MailAccount, ProviderKind

USER_ERRORS = {
    "already_v3": _("Dieses Konto synchronisiert bereits über V3."),
    "already_running": _("Für dieses Konto läuft bereits eine Migration."),
    "wrong_state": _("Die Migration ist in einem anderen Schritt; die Seite zeigt den aktuellen Stand."),
}

# What users read about a migration's step, where the status name alone says too little ("Wartet" on what?).
STATUS_TEXT = {
    Status.PENDING: _("Wird gestartet"),
}
# The settings page's status column for an account with a migration under way: what is happening, and who
# has to act (the user, the administrator, or nobody).
ROW_TEXT = {
    Status.PENDING: _("Migration wird gestartet"),
    Status.DETECTING: _("Migration läuft: Anbieter wird erkannt"),
    Status.AWAITING_USER: _("Migration wartet auf Ihre Anmeldung"),
    Status.AWAITING_ADMIN_CONSENT: _("Migration wartet auf die Zustimmung Ihres Administrators"),
    Status.VERIFYING: _("Migration läuft: Verbindung wird geprüft"),
    Status.HANDING_OVER: _("Migration läuft: Synchronisierung wird übergeben"),
}


def status_text(status: str) -> str:
    """The user-facing name of a migration status (str), in the active language."""
    return str(STATUS_TEXT.get(status) or Status(status).label) if status in Status.values else status


@functools.lru_cache(maxsize=16)
def _row_labels(language: str | None) -> tuple[dict, dict, dict]:
    """(engine labels, account status labels, ROW_TEXT) as plain strings in `language` (the active one when
    called: the cache's key). The lazy labels cost a translation each time a row rendered one (issue 13)."""
    return tuple({key: str(label) for key, label in table} for table in (
        Engine.choices, AccountStatus.choices, ROW_TEXT.items()))

FORMS = {ProviderKind.IMAP: ImapCredentialsForm, ProviderKind.EXCHANGE: ExchangeCredentialsForm}
FORM_TEMPLATES = {ProviderKind.IMAP: "migration/_imap_form.html", ProviderKind.EXCHANGE: "migration/_exchange_form.html"}


def _actor(request) -> str:
    return f"user:{request.user.pk}"


def _user_error(code: str) -> str:
    return str(USER_ERRORS.get(code) or errors.message_for(code))


@login_required
def settings_page(request):
    rows = selectors.settings_page_rows(request.user)
    language = get_language()
    engine_labels, status_labels, row_text = _row_labels(language)
    # One CSRF token for the page: the rows' forms and the template's {% csrf_token %} (this value overrides
    # the context processor's), so the token is masked once, not once per form.
    csrf_token, paths = get_token(request), row_actions.Paths()
    for row in rows:
        running, last, sync_error = row["active"], row["latest"], row["last_sync_error"]
        row.update({
            # Labels looked up here: the template's get_FOO_display rebuilds the choices (and translates
            # each label) on every call, ~20 µs per cell (issue 13).
            "engine_label": engine_labels.get(row["engine"], row["engine"]),
            "status_label": status_labels.get(row["status"], row["status"]),
            "sync_error": errors.message_for(sync_error) if sync_error else "",
            # A Workspace admin restricts the app: the steps at Google, for the user to pass on.
            "admin_help_url": google_flow.ADMIN_HELP_URL if sync_error == "google_admin_policy" else "",
            "migration_text": row_text.get(running["status"], "") if running else "",
            "failure": errors.message_for(last["error_code"])
            if last and last["status"] == Status.FAILED and last["error_code"] else "",
        })
        row["actions"] = row_actions.actions(row, csrf_token=csrf_token, language=language, paths=paths)
    # What a migration does is said once, before the first click, and only while there is one to start.
    can_start = any(row["engine"] == "v2" and not row["active"] for row in rows)
    return render(request, "migration/settings_mail.html",
                  {"rows": rows, "nav": "settings", "can_start": can_start, "csrf_token": csrf_token})


@login_required
@require_POST
def start(request, account_id: int):
    account = get_object_or_404(MailAccount, pk=account_id, owner=request.user)
    try:
        migration = services.start_migration(user=request.user, account=account)
    except services.MigrationError as error:
        messages.error(request, _user_error(error.code))
        return redirect("settings-mail")
    return redirect("migration-detail", pk=migration.pk)


@login_required
def detail(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    return _render_detail(request, migration, _form(migration))


def _form(migration, data=None):
    """The login step's form, or None when this step has no password form."""
    form_class = FORMS.get(migration.provider_kind)
    if migration.status != Status.AWAITING_USER or form_class is None or _must_choose(migration):
        return None
    detected = migration.detected or {}
    return form_class(data, account=migration.account, stranger=detected.get("confirm_host", ""),
                      initial=_initial(migration))


def _must_choose(migration) -> bool:
    """An ambiguous detection (IONOS) waits for the user's choice before any form."""
    detected = migration.detected or {}
    return len(detected.get("candidates") or []) > 1 and not detected.get("chosen")


def _initial(migration) -> dict:
    detected = migration.detected or {}
    connection = migration.connection or {}
    address = migration.account.address
    if migration.provider_kind == ProviderKind.EXCHANGE:
        return {"address": address, "server": connection.get("ews_url") or detected.get("ews_url", ""),
                "username": connection.get("username") or detected.get("username", address),
                "auth_type": connection.get("auth_type") or "auto", "ca_pem": connection.get("ca_pem", "")}
    return {
        "address": address,
        "host": connection.get("host") or detected.get("host", ""),
        "port": connection.get("port") or detected.get("port", 993),
        "security": connection.get("security") or detected.get("security", "ssl"),
        "username": connection.get("username") or detected.get("username", address),
    }


def _render_detail(request, migration, form, status=200):
    detected = migration.detected or {}
    return render(request, "migration/detail.html", {
        "migration": migration,
        "form": form,
        "form_template": FORM_TEMPLATES.get(migration.provider_kind),
        # Stored as German source texts: each reader gets them in the page's language.
        "hints": [gettext(hint) for hint in detected.get("hints") or []],
        "help_url": detected.get("help_url", ""),
        "candidates": _candidates(migration) if migration.status == Status.AWAITING_USER else [],
        "unavailable": unavailable(),
        "events": [(event, status_text(event.to_status)) for event in migration.events.all()],
        "status_label": status_text(migration.status),
        "error_message": errors.message_for(migration.error_code) if migration.error_code else "",
        "nav": "settings",
        **microsoft_views.detail_context(migration, request),
        **google_views.detail_context(migration),
    }, status=status)


def _candidates(migration) -> list[dict]:
    if not _must_choose(migration):
        return []
    labels = {"microsoft365": _("Weiter mit Microsoft")}
    return [{"key": key, "label": labels.get(key) or _("Weiter mit IMAP (%(provider)s)") % {
        "provider": CHOICES_BY_KEY[key].label}} for key in migration.detected["candidates"] if key in CHOICES_BY_KEY]


@sensitive_post_parameters("password")
@login_required
@require_POST
def credentials(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    form = _form(migration, request.POST)
    if form is None:
        messages.info(request, _user_error("wrong_state"))
        return redirect("migration-detail", pk=pk)
    if migration.provider_kind == ProviderKind.EXCHANGE and exchange_online.is_exchange_online(form.target_host()):
        # Checked before the rest of the form: the password is neither needed nor used for Exchange Online.
        return _route_to_microsoft(request, migration, form.target_host())
    if not form.is_valid():
        return _render_detail(request, migration, form, status=400)
    connection = form.connection()
    try:
        # Counted per user and per destination: the form is no port scanner or password sprayer. Over the
        # destination's budget (a company's own server, all its users) the check waits for a later window.
        not_before = attempt_queue.reserve_attempt(request.user.pk, *egress.destination(
            url=connection.get("ews_url", ""), host=connection.get("host", ""), port=connection.get("port")))
    except egress.RateLimited:
        form.add_error(None, errors.message_for("rate_limited"))
        return _render_detail(request, migration, form, status=429)
    try:
        services.submit_credentials(migration=migration, connection=connection,
                                    password=form.cleaned_data["password"], actor=_actor(request),
                                    not_before=not_before)
    except (services.MigrationError, services.TransitionConflict):
        # The double click: the first submit already moved the migration on.
        messages.info(request, _user_error("wrong_state"))
    return redirect("migration-detail", pk=pk)


def _route_to_microsoft(request, migration, host: str):
    """An Exchange Online host typed into the Exchange step: on to the Microsoft 365 sign-in, with the reason."""
    try:
        choose_provider(migration=migration, key="microsoft365", actor=_actor(request), extra={"exchange_online": True},
                        reason=f"Exchange Online host {host}: Microsoft 365 (Graph) instead of EWS")
    except ChoiceRefused:
        messages.info(request, _user_error("wrong_state"))
    else:
        messages.info(request, exchange_online.EXPLANATION % {"host": host})
    return redirect("migration-detail", pk=migration.pk)


@login_required
def status(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    return JsonResponse({"status": migration.status, "label": status_text(migration.status)})


@login_required
@require_POST
def retry(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    try:
        services.retry_migration(migration=migration, actor=_actor(request))
    except (services.MigrationError, services.TransitionConflict) as error:
        messages.error(request, _user_error(getattr(error, "code", "wrong_state")))
    return redirect("migration-detail", pk=pk)


@login_required
@require_http_methods(["GET", "POST"])
def cancel(request, pk: int):
    """GET asks (what cancelling means, with a way back); POST cancels and says so."""
    migration = selectors.get_migration_for_user(request.user, pk)
    if request.method == "GET":
        if not migration.is_active or migration.status == Status.HANDING_OVER:
            return redirect("migration-detail", pk=pk)  # nothing left to cancel
        return render(request, "migration/cancel.html", {"migration": migration, "nav": "settings"})
    try:
        services.cancel_migration(migration=migration, actor=_actor(request), reason="cancelled by user")
    except (services.MigrationError, services.TransitionConflict):
        messages.error(request, _user_error("wrong_state"))
    else:
        messages.success(request, _("Die Migration von %(address)s wurde abgebrochen. Das Konto synchronisiert "
                                    "unverändert weiter über V2.") % {"address": migration.account.address})
    return redirect("settings-mail")
