from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.utils import translation
from django.utils.translation import gettext as _
from django.views import i18n
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from portal import health as portal_health
from portal import profiles
from portal.forms import NotificationSettingsForm
from sync.selectors import accounts_for_user, messages_for_user


@login_required
def dashboard(request):
    accounts = list(accounts_for_user(request.user))
    return render(request, "portal/dashboard.html", {
        "accounts": accounts,
        "v2_count": sum(1 for account in accounts if account.engine == "v2"),
        "recent_messages": messages_for_user(request.user)[:5],
        "nav": "overview",
    })


@login_required
def settings_index(request):
    return redirect("settings-mail")


@require_POST
def set_language(request):
    """The DE/EN switch: Django's set_language (cookie, redirect), and for a signed-in user the choice is kept
    on their profile, so the e-mails the portal sends them later are in that language too."""
    response = i18n.set_language(request)
    language = request.POST.get("language", "")
    if request.user.is_authenticated and profiles.valid_language(language):
        profiles.set_language(user=request.user, language=language)
    return response


@login_required
@require_http_methods(["GET", "POST"])
def settings_notifications(request):
    """Einstellungen -> E-Mail-Benachrichtigungen: language of the portal's mails, reminders on/off."""
    if request.method == "POST":
        form = NotificationSettingsForm(request.POST)
        if form.is_valid():
            language = form.cleaned_data["language"]
            profiles.set_language(user=request.user, language=language)
            profiles.set_reminders(user=request.user, enabled=form.cleaned_data["campaign_reminders"])
            response = redirect("settings-notifications")
            # The pages follow the mails' language: one choice, not two that disagree.
            response.set_cookie(settings.LANGUAGE_COOKIE_NAME, language, max_age=settings.LANGUAGE_COOKIE_AGE,
                                path=settings.LANGUAGE_COOKIE_PATH, domain=settings.LANGUAGE_COOKIE_DOMAIN,
                                secure=settings.LANGUAGE_COOKIE_SECURE, httponly=settings.LANGUAGE_COOKIE_HTTPONLY,
                                samesite=settings.LANGUAGE_COOKIE_SAMESITE)
            with translation.override(language):
                messages.success(request, _("Ihre Einstellungen wurden gespeichert."))
            return response
    else:
        form = NotificationSettingsForm(initial={
            # Never chose: the language the pages are shown in now (cookie or browser).
            "language": profiles.chosen_language(request.user) or request.LANGUAGE_CODE,
            "campaign_reminders": profiles.wants_reminders(request.user),
        })
    return render(request, "portal/settings_notifications.html", {"form": form, "nav": "settings"})


@never_cache
def health(request):
    """For load balancers and compose, without a login: each dependency as JSON, 503 when a required one is down.

    See portal.health for the body and which dependencies are required.
    """
    status, body = portal_health.report()
    return JsonResponse(body, status=status)
