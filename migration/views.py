from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from migration import errors, selectors, services
from migration.forms import ImapCredentialsForm
from migration.microsoft import views as microsoft_views
from migration.models import Status
from sync.models import MailAccount, ProviderKind
from sync.selectors import accounts_for_user

USER_ERRORS = {
    "already_v3": _("Dieses Konto synchronisiert bereits über V3."),
    "already_running": _("Für dieses Konto läuft bereits eine Migration."),
    "wrong_state": _("Die Migration ist in einem anderen Schritt; die Seite zeigt den aktuellen Stand."),
}


def _actor(request) -> str:
    return f"user:{request.user.pk}"


def _user_error(code: str) -> str:
    return str(USER_ERRORS.get(code) or errors.message_for(code))


@login_required
def settings_page(request):
    accounts = list(accounts_for_user(request.user))
    active = selectors.active_migrations_by_account(request.user)
    latest = selectors.latest_migrations_by_account(request.user)
    rows = [
        {"account": a, "active": active.get(a.pk), "latest": latest.get(a.pk),
         "sync_error": errors.message_for(a.last_sync_error) if a.last_sync_error else ""}
        for a in accounts
    ]
    return render(request, "migration/settings_mail.html", {"rows": rows, "nav": "settings"})


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
    form = None
    if migration.status == Status.AWAITING_USER and migration.provider_kind == ProviderKind.IMAP:
        form = ImapCredentialsForm(account=migration.account, initial=_initial(migration))
    return _render_detail(request, migration, form)


def _initial(migration) -> dict:
    detected = migration.detected or {}
    connection = migration.connection or {}
    return {
        "address": migration.account.address,
        "host": connection.get("host") or detected.get("host", ""),
        "port": connection.get("port") or detected.get("port", 993),
        "security": connection.get("security") or detected.get("security", "ssl"),
        "username": connection.get("username") or detected.get("username", migration.account.address),
    }


def _render_detail(request, migration, form, status=200):
    return render(request, "migration/detail.html", {
        "migration": migration,
        "form": form,
        "events": migration.events.all(),
        "error_message": errors.message_for(migration.error_code) if migration.error_code else "",
        "nav": "settings",
        **microsoft_views.detail_context(migration),
    }, status=status)


@sensitive_post_parameters("password")
@login_required
@require_POST
def credentials(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    if migration.status != Status.AWAITING_USER or migration.provider_kind != ProviderKind.IMAP:
        messages.info(request, _user_error("wrong_state"))
        return redirect("migration-detail", pk=pk)
    form = ImapCredentialsForm(request.POST, account=migration.account)
    if not form.is_valid():
        return _render_detail(request, migration, form, status=400)
    try:
        services.submit_imap_credentials(
            migration=migration, server=form.server(), password=form.cleaned_data["password"], actor=_actor(request)
        )
    except (services.MigrationError, services.TransitionConflict):
        # The double click: the first submit already moved the migration on.
        messages.info(request, _user_error("wrong_state"))
    return redirect("migration-detail", pk=pk)


@login_required
def status(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    return JsonResponse({"status": migration.status, "label": migration.get_status_display()})


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
@require_POST
def cancel(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    try:
        services.cancel_migration(migration=migration, actor=_actor(request), reason="cancelled by user")
    except (services.MigrationError, services.TransitionConflict):
        messages.error(request, _user_error("wrong_state"))
    return redirect("settings-mail")
