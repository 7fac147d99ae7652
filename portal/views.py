from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache

from portal import health as portal_health
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


@never_cache
def health(request):
    """For load balancers and compose, without a login: each dependency as JSON, 503 when a required one is down.

    See portal.health for the body and which dependencies are required.
    """
    status, body = portal_health.report()
    return JsonResponse(body, status=status)
