"""Sending the portal's e-mails: one helper for the parts every mail shares.

Callers render subject and body inside profiles.in_language_of(recipient),
so short_date() and gettext follow the recipient's language. Sending goes
through Django's configured backend (settings: SMTP from the environment, or
files in PORTAL_DATA_DIR/mail); it raises OSError (smtplib's errors included)
when the server refuses or cannot be reached, for the caller to record.
"""

from datetime import date

from django.conf import settings
from django.core.mail import EmailMessage
from django.utils import formats


def short_date(value: date) -> str:
    """18.07.2025 in German, 18 Jul 2025 in English (portal/formats), in the active language."""
    return formats.date_format(value, "SHORT_DATE_FORMAT")


def absolute_url(path: str) -> str:
    """A link for a mail: SITE_URL (the address users open the portal at) + path."""
    return settings.SITE_URL.rstrip("/") + path


def send(*, to: list[str], subject: str, body: str, headers: dict | None = None) -> None:
    """Send one plain-text mail from DEFAULT_FROM_EMAIL. Raises OSError when it could not be handed over."""
    EmailMessage(subject, body, settings.DEFAULT_FROM_EMAIL, to, headers=headers or {}).send()
