from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class Heartbeat(models.Model):
    """When a background process last showed it was alive; GET /health/ reads these.

    One row per role ("worker", "beat"), shared by every process of every
    deployment through the database (the embedded default's cache is per
    process, so the cache could not carry it). Several workers share the
    "worker" row: it says that at least one worker ran recently.
    """

    name = models.CharField(primary_key=True, max_length=20)
    seen_at = models.DateTimeField()
    # What the role reports with its beat: the IMAP IDLE listener its open connections.
    count = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} @ {self.seen_at:%Y-%m-%d %H:%M:%S}"


class UserProfile(models.Model):
    """What a user chose for themselves that the portal needs without a request: the language of the
    e-mails it sends them, and whether they want the campaign's reminder e-mails.

    One row per user, made on the first choice (portal.profiles); no row means the defaults:
    the portal's language (settings.LANGUAGE_CODE) and reminders on.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, models.CASCADE, primary_key=True,
                                related_name="portal_profile", verbose_name=_("Benutzer"))
    # A code from settings.LANGUAGES, or "" for the portal's default.
    language = models.CharField(_("Sprache"), max_length=10, blank=True)
    campaign_reminders = models.BooleanField(_("Erinnerungen an die Migration per E-Mail"), default=True)
    updated_at = models.DateTimeField(_("Geändert"), auto_now=True)

    class Meta:
        verbose_name = _("Benutzereinstellung")
        verbose_name_plural = _("Benutzereinstellungen")

    def __str__(self) -> str:
        return f"{self.user_id}: {self.language or '-'}"
