"""The Google views: sign-in redirect and callback (a migration's login step, or a re-connect).

The callback is untrusted input: it must bring back the state of a flow in this
user's session (migration.google.flow). One that does not (forged, replayed,
expired, from another browser, no state at all) changes nothing and gets the
same 400 page as the Microsoft callback, logged with its code. Errors of a
migration's sign-in are kept on the migration (error_code) and shown on its page
until the sign-in starts again or the user picks another provider; the
admin-restricted Workspace gets the steps and a link for its admin there.
"""

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from migration import errors, selectors, services
from migration.google import flow
from migration.google import steps as google_steps
from migration.models import Migration, Status
from sync.google import engine as google_engine
from sync.google.oauth import GoogleError
from sync.models import Engine, MailAccount, ProviderKind

logger = logging.getLogger(__name__)

WRONG_STATE = _("Die Migration ist in einem anderen Schritt; die Seite zeigt den aktuellen Stand.")


def redirect_uri() -> str:
    """The redirect URI registered with the portal's Google OAuth client (SITE_URL + path)."""
    return settings.SITE_URL.rstrip("/") + reverse("google-callback")


def detail_context(migration: Migration) -> dict:
    """What migration/detail.html needs for the Google sign-in step."""
    if migration.provider_kind != ProviderKind.GOOGLE:
        return {}
    code = migration.error_code if migration.error_code.startswith("google_") else ""
    return {"google": {"error": errors.message_for(code) if code else "", "admin_policy": code == "google_admin_policy",
                       "admin_help_url": flow.ADMIN_HELP_URL}}


@login_required
@require_POST
def sign_in(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    if migration.provider_kind != ProviderKind.GOOGLE or migration.status not in google_steps.SIGN_IN_STATUSES:
        messages.info(request, WRONG_STATE)
        return redirect("migration-detail", pk=pk)
    _note(migration, "")  # a new sign-in: the last one's error is history
    try:
        return redirect(flow.begin(session=request.session, purpose=f"m{pk}", address=migration.account.address,
                                   redirect_uri=redirect_uri()))
    except GoogleError as error:
        _note(migration, error.code)
    return redirect("migration-detail", pk=pk)


@login_required
def callback(request):
    state = str(request.GET.get("state", ""))
    # Which sign-in this answers (the flow itself is checked and taken by flow.complete).
    kept = (request.session.get(flow.SESSION_KEY) or {}).get(state) or {}
    purpose = str(kept.get("for", "")) if isinstance(kept, dict) else ""
    try:
        purpose, grant = flow.complete(session=request.session, params=request.GET)
    except GoogleError as error:
        if error.code == "google_state_mismatch":
            # Not an answer to a sign-in this browser started: nothing changes (like migration.microsoft.views).
            logger.warning("google callback refused for user %s: %s", request.user.pk, error.code)
            return render(request, "migration/callback_error.html",
                          {"heading": _("Anmeldung bei Google"), "message": errors.message_for(error.code),
                           "nav": "settings"}, status=400)
        return _callback_failed(request, purpose, error.code)
    if purpose.startswith("a"):
        account = get_object_or_404(MailAccount, pk=int(purpose[1:]), owner=request.user)
        google_engine.reconnect(account_id=account.pk, grant=grant)
        messages.success(request, _("%(address)s ist wieder verbunden.") % {"address": account.address})
        return redirect("settings-mail")
    migration = selectors.get_migration_for_user(request.user, int(purpose[1:]))
    try:
        google_steps.signed_in(migration=migration, grant=grant, actor=f"user:{request.user.pk}")
    except (services.MigrationError, services.TransitionConflict):
        messages.info(request, WRONG_STATE)
    # A redirect at once: the code does not stay in the address bar or history.
    return redirect("migration-detail", pk=migration.pk)


def _callback_failed(request, purpose: str, code: str):
    if purpose.startswith("m"):
        migration = selectors.get_migration_for_user(request.user, int(purpose[1:]))
        _note(migration, code)
        return redirect("migration-detail", pk=migration.pk)
    messages.error(request, errors.message_for(code))
    if code == "google_admin_policy":
        messages.info(request, _("Anleitung für Ihren Administrator: %(url)s") % {"url": flow.ADMIN_HELP_URL})
    return redirect("settings-mail")


def _note(migration: Migration, code: str) -> None:
    """Keep a sign-in error on the migration's Google step, for its page (nothing else changes).

    Only while the step is Google's: the answer to a sign-in the user left for another provider
    must not put a Google error on that provider's form."""
    Migration.objects.filter(pk=migration.pk, status=Status.AWAITING_USER,
                             provider_kind=ProviderKind.GOOGLE).update(error_code=code)


@login_required
@require_POST
def reconnect(request, account_id: int):
    account = get_object_or_404(MailAccount, pk=account_id, owner=request.user, provider_kind=ProviderKind.GOOGLE,
                                engine=Engine.V3)
    try:
        return redirect(flow.begin(session=request.session, purpose=f"a{account.pk}", address=account.address,
                                   redirect_uri=redirect_uri()))
    except GoogleError as error:
        messages.error(request, errors.message_for(error.code))
        return redirect("settings-mail")
