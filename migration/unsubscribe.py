"""The link at the end of every reminder: turn the campaign's reminder e-mails off without signing in.

The link carries a signed token (reminders.unsubscribe_token); nothing else
identifies the user. Opening it (GET) only asks: mail scanners open links.
The button posts back; mail programs that offer "unsubscribe" post the
same URL with List-Unsubscribe=One-Click (RFC 8058), without a CSRF token,
so the token is what authorises the request. Turning reminders off is all it
can do; they are turned back on under Einstellungen → E-Mail-Benachrichtigungen.
"""

from django.contrib.auth import get_user_model
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from migration import reminders
from portal import profiles


@csrf_exempt  # RFC 8058 one-click POSTs carry no CSRF token; the signed token authorises this one action
@require_http_methods(["GET", "POST"])
def unsubscribe(request, token: str):
    user_id = reminders.user_for_token(token)
    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    if user is None:
        return render(request, "migration/unsubscribe.html", {"invalid": True}, status=400)
    if request.method == "POST":
        profiles.set_reminders(user=user, enabled=False)
        return render(request, "migration/unsubscribe.html", {"done": True})
    return render(request, "migration/unsubscribe.html", {"token": token})
