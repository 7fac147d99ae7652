"""The Microsoft views: sign-in redirect and callback, admin consent, re-connect.

The callbacks are untrusted input: the sign-in callback must bring back the
state of a flow in this user's session, the admin-consent callback the state
of a request the portal made (bound to its tenant server-side, and to the
browser that was sent to Microsoft).
"""

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods, require_POST

from migration import errors, selectors, services
from migration.microsoft import client, consent, flow
from migration.microsoft.client import MicrosoftError
from migration.models import Migration, Status, TenantConsent
from sync.models import Engine, MailAccount, ProviderKind

logger = logging.getLogger(__name__)

WRONG_STATE = _("Die Migration ist in einem anderen Schritt; die Seite zeigt den aktuellen Stand.")
STILL_NO_CONSENT = _("Microsoft verlangt weiterhin die Zustimmung eines Administrators; sie ist noch nicht erteilt. "
                     "Bitten Sie Ihren Administrator, wie unten beschrieben zuzustimmen.")
ADMIN_OUTCOMES = {
    "reported": _("Vielen Dank, Ihre Antwort ist eingegangen. Die wartenden Benutzer werden per E-Mail gebeten, sich "
                  "erneut bei Microsoft anzumelden; erst ihre erfolgreiche Anmeldung bestätigt die Zustimmung."),
    "declined": _("Die Zustimmung wurde nicht erteilt. Es wurde nichts geändert."),
    "forged": _("Diese Antwort ist ungültig, abgelaufen oder wurde schon verwendet. Es wurde nichts geändert."),
    "unproven": _("Microsoft hat die Zustimmung nicht bestätigt. Es wurde nichts geändert. Bitte versuchen Sie es "
                  "erneut oder erteilen Sie die Zustimmung im Microsoft Entra Admin Center."),
    "unreachable": _("Microsoft war nicht erreichbar, um die Zustimmung zu bestätigen. Es wurde nichts geändert. "
                     "Bitte öffnen Sie den Link in einigen Minuten erneut."),
}


def _actor(request) -> str:
    return f"user:{request.user.pk}"


# In the session: migrations whose sign-in came back from Microsoft's blocking
# page ("Return to the application without granting consent"), to ask the user.
QUESTION_KEY = "microsoft_consent_question"


def detail_context(migration: Migration, request=None) -> dict:
    """What migration/detail.html needs to show the Microsoft steps."""
    if migration.provider_kind != ProviderKind.MICROSOFT:
        return {}
    detected = migration.detected or {}
    context = {"consent_reported": bool(detected.get("consent_reported")),
               **_consent_steps(consent.tenant_of(migration))}
    if migration.status == Status.AWAITING_USER and not context["consent_reported"]:
        # The cancel return of the blocking page (asked once), or another user of the tenant met the block.
        context["consent_question"] = bool(request and migration.pk in request.session.get(QUESTION_KEY, []))
        context["admin_first"] = context["consent_question"] or consent.tenant_blocked(context["tenant"])
    if migration.status == Status.AWAITING_ADMIN_CONSENT or context.get("admin_first"):
        context["admin_link"] = consent.make_admin_link(tenant=context["tenant"], migration_id=migration.pk)
    return {"microsoft": context}


def _ask_about_block(request, migration: Migration) -> None:
    asked = [pk for pk in request.session.get(QUESTION_KEY, []) if pk != migration.pk][-4:]
    request.session[QUESTION_KEY] = asked + [migration.pk]


def _forget_question(request, migration: Migration) -> None:
    asked = request.session.get(QUESTION_KEY, [])
    if migration.pk in asked:
        request.session[QUESTION_KEY] = [pk for pk in asked if pk != migration.pk]


def _blocking_page_return(answer: dict) -> bool:
    """The link back from Microsoft's "Need admin approval" page: a cancel that names no AADSTS code.

    A user's own Cancel on the consent screen carries AADSTS65004 (a decline).
    """
    return (answer["error"] == "access_denied" and answer["error_subcode"] == "cancel"
            and not client.aadsts_codes(answer))


@login_required
@require_POST
def sign_in(request, pk: int):
    migration = selectors.get_migration_for_user(request.user, pk)
    try:
        return redirect(flow.begin_migration_sign_in(session=request.session, migration=migration))
    except services.MigrationError:
        messages.info(request, WRONG_STATE)
    except MicrosoftError as error:
        messages.error(request, errors.message_for(error.code))
    return redirect("migration-detail", pk=pk)


@login_required
def callback(request):
    found = flow.take_flow(request.session, str(request.GET.get("state", "")))
    if found is None:
        # A forged or replayed callback, or one from another browser: nothing changes.
        logger.warning("microsoft callback refused for user %s: ms_state_mismatch", request.user.pk)
        return render(request, "migration/callback_error.html",
                      {"heading": _("Anmeldung bei Microsoft"), "message": errors.message_for("ms_state_mismatch"),
                       "nav": "settings"}, status=400)
    key, ms_flow = found
    if key.startswith("a"):
        return _reconnect_callback(request, int(key[1:]), ms_flow)
    migration = selectors.get_migration_for_user(request.user, int(key[1:]))
    _forget_question(request, migration)
    try:
        if "error" in request.GET:
            answer = {k: str(request.GET.get(k, "")) for k in ("error", "error_description", "error_subcode")}
            if _blocking_page_return(answer):
                if migration.status == Status.AWAITING_ADMIN_CONSENT:
                    messages.info(request, STILL_NO_CONSENT)
                else:  # the page asks "Hat Microsoft 'Administratorgenehmigung erforderlich' angezeigt?"
                    _ask_about_block(request, migration)
            elif client.needs_admin_consent(answer):
                codes = ",".join(str(c) for c in sorted(client.aadsts_codes(answer))) or answer["error"]
                already_waiting = migration.status == Status.AWAITING_ADMIN_CONSENT
                consent.require_admin_consent(migration=migration, reason=codes, actor=_actor(request))
                if already_waiting:  # "Erneut bei Microsoft anmelden" before an admin consented
                    messages.info(request, STILL_NO_CONSENT)
            else:
                messages.error(request, errors.message_for(client.error_from(answer).code))
        else:
            flow.submit_auth_response(migration=migration, flow=ms_flow, actor=_actor(request),
                                      auth_response=client.auth_response_from(request.GET))
    except (services.MigrationError, services.TransitionConflict):
        messages.info(request, WRONG_STATE)
    # A redirect at once: the code does not stay in the address bar or history.
    return redirect("migration-detail", pk=migration.pk)


@login_required
@require_POST
def blocked(request, pk: int):
    """"Microsoft hat 'Administratorgenehmigung erforderlich' angezeigt": the admin path."""
    migration = selectors.get_migration_for_user(request.user, pk)
    _forget_question(request, migration)
    try:
        consent.report_block(migration=migration, actor=_actor(request))
    except (services.MigrationError, services.TransitionConflict):
        messages.info(request, WRONG_STATE)
    return redirect("migration-detail", pk=pk)


def _to_admin_path(request, migration: Migration) -> Migration:
    """A way of the admin path used from the sign-in step (a blocked tenant shows them first): wait for the admin."""
    if migration.status == Status.AWAITING_USER and migration.provider_kind == ProviderKind.MICROSOFT:
        _forget_question(request, migration)
        try:
            return consent.report_block(migration=migration, actor=_actor(request))
        except (services.MigrationError, services.TransitionConflict):
            pass
    return migration


@login_required
@require_POST
def admin_consent(request, pk: int):
    """"Mit Administratorkonto anmelden": this browser goes to Microsoft's admin-consent endpoint."""
    migration = _to_admin_path(request, selectors.get_migration_for_user(request.user, pk))
    if migration.status != Status.AWAITING_ADMIN_CONSENT or migration.provider_kind != ProviderKind.MICROSOFT:
        messages.info(request, WRONG_STATE)
        return redirect("migration-detail", pk=pk)
    try:
        return redirect(consent.begin_admin_consent(session=request.session, tenant=consent.tenant_of(migration),
                                                    migration_id=migration.pk))
    except MicrosoftError as error:
        messages.error(request, errors.message_for(error.code))
        return redirect("migration-detail", pk=pk)


LINK_MAIL_OUTCOMES = {
    "no_address": _("Zu Ihrem CRM-Zugang ist keine E-Mail-Adresse hinterlegt. Bitte kopieren Sie den Link."),
    "user_limit": _("Sie haben in der letzten Stunde schon mehrere Links erhalten. Bitte kopieren Sie den Link oder "
                    "versuchen Sie es später erneut."),
    "tenant_limit": _("Für Ihre Organisation wurden in der letzten Stunde schon viele Links gesendet. Bitte kopieren "
                      "Sie den Link oder versuchen Sie es später erneut."),
}


@login_required
@require_POST
def send_admin_link(request, pk: int):
    """"Link an mich senden": the admin link goes to the user's own address, to forward to their admin."""
    migration = _to_admin_path(request, selectors.get_migration_for_user(request.user, pk))
    if migration.status != Status.AWAITING_ADMIN_CONSENT or migration.provider_kind != ProviderKind.MICROSOFT:
        messages.info(request, WRONG_STATE)
        return redirect("migration-detail", pk=pk)
    outcome = consent.mail_admin_link_to_requester(migration=migration, user=request.user)
    if outcome == "sent":
        messages.success(request, _("Der Link wurde an %(email)s gesendet. Leiten Sie ihn an Ihren Administrator "
                                    "weiter.") % {"email": request.user.email})
    else:
        messages.error(request, LINK_MAIL_OUTCOMES[outcome])
    return redirect("migration-detail", pk=pk)


@require_http_methods(["GET", "POST"])
def admin_link(request, token: str):
    """The page behind the link an admin receives (no CRM login needed). It grants nothing by itself."""
    data = consent.read_admin_link(token)
    if data is None:
        return render(request, "migration/microsoft/admin_link.html", {"invalid": True}, status=410)
    if request.method == "POST":
        # An admin without a CRM login gets no session (a database row per post): the
        # browser's states live in a signed cookie instead.
        states = request.session if request.user.is_authenticated else _cookie_states(request)
        try:
            response = redirect(consent.begin_admin_consent(session=states, tenant=data["t"],
                                                            migration_id=data.get("m")))
        except MicrosoftError as error:
            return render(request, "migration/microsoft/admin_result.html",
                          {"message": errors.message_for(error.code), "ok": False}, status=503)
        if states is not request.session:
            _keep_cookie_states(response, states)
        return response
    requester = Migration.objects.select_related("account").filter(pk=data.get("m")).first() if data.get("m") else None
    return render(request, "migration/microsoft/admin_link.html", {
        "tenant": data["t"], "requester": requester.account.address if requester else "",
        "app_name": settings.MS_APP_DISPLAY_NAME, "legacy_app_name": settings.MS_LEGACY_APP_DISPLAY_NAME,
    })


def admin_callback(request):
    """Microsoft sends the admin back here; untrusted until a token proves the consent."""
    cookie = _cookie_states(request)
    states = cookie if str(request.GET.get("state", "")) in cookie[consent.SESSION_KEY] else request.session
    outcome, consent_request = consent.complete_admin_consent(session=states, params=request.GET)
    response = _admin_callback_answer(request, outcome, consent_request)
    if states is cookie:
        _keep_cookie_states(response, cookie)
    return response


def _admin_callback_answer(request, outcome: str, consent_request):
    text = ADMIN_OUTCOMES[outcome]
    migration = consent_request.migration if consent_request else None
    if migration and request.user.is_authenticated and migration.user_id == request.user.pk:
        (messages.success if outcome == "reported" else messages.error)(request, text)
        return redirect("migration-detail", pk=migration.pk)
    return render(request, "migration/microsoft/admin_result.html", {"message": text, "ok": outcome == "reported"},
                  status=400 if outcome == "forged" else 200)


# The admin-consent states of a browser without a CRM login (admin_link, admin_callback).
STATE_COOKIE = "ms_admin_consent"
STATE_COOKIE_SALT = "migration.microsoft.admin-consent-states"


def _cookie_states(request) -> dict:
    """{consent.SESSION_KEY: [state, ...]} from the signed cookie; shaped like the session's entry."""
    raw = request.get_signed_cookie(STATE_COOKIE, default="", salt=STATE_COOKIE_SALT,
                                    max_age=consent.REQUEST_MAX_AGE.total_seconds())
    return {consent.SESSION_KEY: [state for state in raw.split(",") if state]}


def _keep_cookie_states(response, states: dict) -> None:
    values = states.get(consent.SESSION_KEY) or []
    path = reverse("microsoft-admin-callback").rsplit("/", 2)[0] + "/"  # /migration/microsoft/
    if not values:
        response.delete_cookie(STATE_COOKIE, path=path, samesite="Lax")
        return
    # Lax: Microsoft's redirect back is a top-level GET, which carries it.
    response.set_signed_cookie(STATE_COOKIE, ",".join(values), salt=STATE_COOKIE_SALT, path=path,
                               max_age=int(consent.REQUEST_MAX_AGE.total_seconds()), httponly=True,
                               secure=settings.SESSION_COOKIE_SECURE, samesite="Lax")


@login_required
@require_POST
def reconnect(request, account_id: int):
    account = get_object_or_404(MailAccount, pk=account_id, owner=request.user, provider_kind=ProviderKind.MICROSOFT,
                                engine=Engine.V3)
    try:
        return redirect(flow.begin_reconnect(session=request.session, account=account))
    except MicrosoftError as error:
        messages.error(request, errors.message_for(error.code))
        return redirect("settings-mail")


def _reconnect_callback(request, account_id: int, ms_flow: dict):
    account = get_object_or_404(MailAccount, pk=account_id, owner=request.user)
    if "error" in request.GET:
        answer = {k: str(request.GET.get(k, "")) for k in ("error", "error_description", "error_subcode")}
        if _blocking_page_return(answer):  # ask: did Microsoft show "Need admin approval"?
            return _reconnect_needs_consent(request, account, question=True)
        if client.needs_admin_consent(answer):
            return _reconnect_needs_consent(request, account)
        messages.error(request, errors.message_for(client.error_from(answer).code))
        return redirect("settings-mail")
    try:
        flow.complete_reconnect(account=account, flow=ms_flow, auth_response=client.auth_response_from(request.GET))
    except MicrosoftError as error:
        if error.code == "ms_admin_consent":
            return _reconnect_needs_consent(request, account)
        messages.error(request, errors.message_for(error.code))
    else:
        consent.record_sign_in(tenant=consent.tenant_for_address(account.address))
        messages.success(request, _("%(address)s ist wieder verbunden.") % {"address": account.address})
    return redirect("settings-mail")


def _reconnect_needs_consent(request, account: MailAccount, *, question: bool = False):
    """The grant of a V3 account was revoked tenant-wide: the same ways to an admin as in a migration.

    There is no migration to resume; once the admin consented, the user re-connects.
    question: the bare cancel of Microsoft's blocking page, which may also be the
    user's own cancel: the page asks, and the tenant is not marked as blocked.
    """
    tenant = consent.tenant_for_address(account.address)
    if not question:
        TenantConsent.objects.get_or_create(tenant=tenant)  # support sees the request in the admin
    context = {**_consent_steps(tenant), "admin_link": consent.make_admin_link(tenant=tenant, migration_id=None),
               "consent_question": question}
    return render(request, "migration/microsoft/reconnect_consent.html",
                  {"account": account, "microsoft": context, "nav": "settings"})


def _consent_steps(tenant: str) -> dict:
    """What the admin-consent steps show: the tenant, both app names, the link's validity."""
    return {"tenant": tenant, "app_name": settings.MS_APP_DISPLAY_NAME,
            "legacy_app_name": settings.MS_LEGACY_APP_DISPLAY_NAME, "link_days": settings.MS_ADMIN_LINK_DAYS}
