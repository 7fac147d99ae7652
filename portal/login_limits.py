"""The one brute-force guard for every login form: django-axes.

Both forms, the portal's (allauth, /accounts/login/) and the Django admin's
(/admin/login/), call django.contrib.auth.authenticate(); axes' backend runs
first there and refuses a login for an account or a client address that has
LOGIN_FAILURE_LIMIT failures within LOGIN_LOCKOUT_MINUTES, even with the right
password. Failures are rows in the database (axes' AccessAttempt), so every
web process of every deployment shares them, the embedded default included.
allauth's own login limits are switched off in settings: one mechanism, one
set of numbers, one way for staff to lift a lock (README "Login limits").

The functions here are axes' hooks (settings AXES_*_CALLABLE).
"""

from allauth.account.adapter import get_adapter
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def login_name(request: HttpRequest, credentials: dict | None) -> str | None:
    """The account a login attempt is for, as axes counts it: the e-mail address in lower case.

    allauth passes {"email": ...}, the admin form and axes itself {"username": ...}; the
    username is the e-mail address (add_user), so both forms count against one account.
    None when the attempt names no account (axes then counts the client address only).
    """
    credentials = credentials or {}
    name = credentials.get("email") or credentials.get("username")
    if not name and request is not None:
        name = request.POST.get("login") or request.POST.get("username")
    name = str(name or "").strip().lower()
    return name[:255] or None


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, from the same place allauth takes it.

    REMOTE_ADDR; behind TRUSTED_PROXY_COUNT proxies, the X-Forwarded-For entry
    the outermost trusted proxy appended (ALLAUTH_TRUSTED_PROXY_COUNT). None if
    there is none (axes then counts the account only).
    """
    try:
        return get_adapter(request).get_client_ip(request)
    except PermissionDenied:
        return None


def lockout_response(request: HttpRequest, original_response=None, credentials: dict | None = None) -> HttpResponse:
    """What a locked-out login sees instead of the form's answer: a translated page, 429."""
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return render(request, "account/locked_out.html", {"minutes": minutes}, status=429)
