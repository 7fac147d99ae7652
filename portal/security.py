"""The Content-Security-Policy of every page (django-csp), plus what depends on settings at request time.

The policy itself is CONTENT_SECURITY_POLICY in settings. A view that needs a
stricter one (the message page) sets its own header, which the middleware keeps.
"""

from urllib.parse import urlsplit

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings


def microsoft_sign_in_origin() -> str:
    """"https://login.microsoftonline.com" for MS_AUTHORITY "https://login.microsoftonline.com/organizations"."""
    parts = urlsplit(settings.MS_AUTHORITY)
    return f"{parts.scheme}://{parts.netloc}"


def google_sign_in_origin() -> str:
    """"https://accounts.google.com" for GOOGLE_AUTH_URL "https://accounts.google.com/o/oauth2/v2/auth"."""
    parts = urlsplit(settings.GOOGLE_AUTH_URL)
    return f"{parts.scheme}://{parts.netloc}"


class PortalCSPMiddleware(CSPMiddleware):
    """CSPMiddleware whose form-action also allows the Microsoft and Google sign-in origins.

    The sign-in, admin-consent and re-connect buttons post to the portal, which
    answers with a redirect to Microsoft or Google; browsers check form-action on
    that redirect too (CSP Level 3, "form-action"). MS_AUTHORITY and
    GOOGLE_AUTH_URL are read per request so that a changed setting (tests'
    local identity platforms) applies at once.
    """

    def get_policy_parts(self, request, response, report_only: bool = False) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if not report_only:
            update = dict(parts.update or {})
            update["form-action"] = [*(update.get("form-action") or []), microsoft_sign_in_origin(),
                                     google_sign_in_origin()]
            parts.update = update
        return parts
