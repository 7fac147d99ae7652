from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import redirect, render

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


def health(request):
    """For load balancers and compose: the app answers and the database too."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - any database failure means unhealthy
        return JsonResponse({"status": "error", "database": "unreachable"}, status=503)
    return JsonResponse({"status": "ok"})
