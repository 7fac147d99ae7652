from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from sync.models import MailAccount, ProviderKind


def parse_day_list(value: str) -> list[int]:
    """"30, 14,7" -> [30, 14, 7] (whole days, 0 to 365, each once, largest first); ValueError otherwise."""
    days = set()
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) > 365:
            raise ValueError(part)
        days.add(int(part))
    return sorted(days, reverse=True)


def validate_day_list(value: str) -> None:
    try:
        parse_day_list(value)
    except ValueError as error:
        raise ValidationError(_("„%(part)s“ ist keine Anzahl Tage zwischen 0 und 365. Beispiel: 30,14,7,3,1"),
                              params={"part": str(error)}, code="invalid") from None


class Campaign(models.Model):
    """The deadline campaign: dates staff edit; defaults come from settings."""

    name = models.CharField(_("Name"), max_length=100)
    migrate_by = models.DateField(_("Migrieren bis"))
    v2_shutdown = models.DateField(_("V2-Abschaltung"))
    is_active = models.BooleanField(_("Aktiv"), default=True)
    # The reminder cadence (migration.reminder_schedule): e-mails to users with accounts still on V2.
    reminder_days_before = models.CharField(
        _("Erinnerungen: Tage vor „Migrieren bis“"), max_length=100, blank=True, default="30,14,7,3,1",
        validators=[validate_day_list],
        help_text=_("Durch Komma getrennt, z. B. 30,14,7,3,1. Leer: keine Erinnerungen vor der Frist."))
    reminder_day_after = models.BooleanField(_("Erinnerung am Tag nach „Migrieren bis“"), default=True)
    reminder_on_shutdown = models.BooleanField(_("Erinnerung am Tag der V2-Abschaltung"), default=True)
    reminder_min_days = models.PositiveSmallIntegerField(
        _("Höchstens eine Erinnerung je Benutzer in so vielen Tagen"), default=1,
        validators=[MinValueValidator(1), MaxValueValidator(90)],
        help_text=_("Gilt auch für Erinnerungen, die der Support von Hand sendet."))
    # Claims (compare-and-swap, one per day however many beats run): the day the cadence last ran,
    # and the day the staff digest last went out.
    reminders_run_on = models.DateField(null=True, blank=True, editable=False)
    digest_sent_on = models.DateField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("Kampagne")
        verbose_name_plural = _("Kampagnen")
        constraints = [
            models.UniqueConstraint(fields=["is_active"], condition=Q(is_active=True), name="one_active_campaign"),
            models.CheckConstraint(condition=Q(v2_shutdown__gte=models.F("migrate_by")), name="shutdown_after_deadline"),
        ]

    def __str__(self):
        return self.name


class Status(models.TextChoices):
    PENDING = "pending", _("Wartet")
    DETECTING = "detecting", _("Anbieter wird erkannt")
    AWAITING_USER = "awaiting_user", _("Wartet auf Anmeldung")
    AWAITING_ADMIN_CONSENT = "awaiting_admin_consent", _("Wartet auf Administrator-Zustimmung")
    VERIFYING = "verifying", _("Verbindung wird geprüft")
    HANDING_OVER = "handing_over", _("Synchronisierung wird übergeben")
    DONE = "done", _("Abgeschlossen")
    FAILED = "failed", _("Fehlgeschlagen")
    CANCELLED = "cancelled", _("Abgebrochen")


# At most one of these per account: enforced by a partial unique index.
ACTIVE_STATUSES = [
    Status.PENDING, Status.DETECTING, Status.AWAITING_USER, Status.AWAITING_ADMIN_CONSENT,
    Status.VERIFYING, Status.HANDING_OVER,
]
# Steps a worker performs; the sweeper re-queues a migration stuck in one.
WORKER_STATUSES = [Status.PENDING, Status.DETECTING, Status.VERIFYING, Status.HANDING_OVER]


class Migration(models.Model):
    """One account's move from V2 to V3. Its status has one writer: services.transition."""

    account = models.ForeignKey(MailAccount, models.CASCADE, related_name="migrations", verbose_name=_("Konto"))
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+", verbose_name=_("Benutzer"))
    campaign = models.ForeignKey(Campaign, models.PROTECT, related_name="migrations", verbose_name=_("Kampagne"))
    status = models.CharField(_("Status"), max_length=30, choices=Status.choices, default=Status.PENDING)
    provider_kind = models.CharField(_("Anbieterart"), max_length=20, choices=ProviderKind.choices)
    # Server settings proposed by detection (host, port, security, username form, hints).
    detected = models.JSONField(default=dict, blank=True)
    # Settings the user confirmed (no secret in here).
    connection = models.JSONField(default=dict, blank=True)
    # Credentials entered for this migration, encrypted; cleared when it ends.
    secret_encrypted = models.TextField(blank=True, editable=False)
    # V3 cursors found while verifying, per folder.
    cursors = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(_("Fehler"), max_length=40, blank=True)
    # How often the user or support started this migration over (retry).
    attempts = models.PositiveIntegerField(default=0)
    # Worker runs of the current step (services.begin_attempt); every status change resets it.
    # After MIGRATION_STEP_ATTEMPTS the migration fails instead of logging in again.
    step_attempts = models.PositiveIntegerField(_("Versuche in diesem Schritt"), default=0)
    # After a failed attempt: the sweeper queues the step again at this time, not before (back-off).
    retry_at = models.DateTimeField(_("Nächster Versuch"), null=True, blank=True)
    created_at = models.DateTimeField(_("Erstellt"), auto_now_add=True)
    updated_at = models.DateTimeField(_("Geändert"), auto_now=True)
    finished_at = models.DateTimeField(_("Beendet"), null=True, blank=True)
    # The confirmation e-mail's claim (migration.done_mail): set when it was handed to the mail server.
    done_mail_sent_at = models.DateTimeField(_("Bestätigung gesendet"), null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("Migration")
        verbose_name_plural = _("Migrationen")
        ordering = ["-created_at"]
        constraints = [
            # Double clicks and two tabs: the database refuses a second live migration.
            models.UniqueConstraint(
                fields=["account"], condition=Q(status__in=ACTIVE_STATUSES), name="one_active_migration_per_account"
            )
        ]
        indexes = [models.Index(fields=["status", "updated_at"], name="migration_status_updated")]

    def __str__(self):
        return f"{self.account.address} ({self.get_status_display()})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


class MigrationEvent(models.Model):
    """Append-only audit trail: every status change, never with a secret."""

    migration = models.ForeignKey(Migration, models.CASCADE, related_name="events")
    at = models.DateTimeField(_("Zeit"), auto_now_add=True)
    from_status = models.CharField(_("Von"), max_length=30, blank=True, choices=Status.choices)
    to_status = models.CharField(_("Nach"), max_length=30, choices=Status.choices)
    reason = models.CharField(_("Grund"), max_length=300, blank=True)
    actor = models.CharField(_("Auslöser"), max_length=150, blank=True)

    class Meta:
        verbose_name = _("Ereignis")
        verbose_name_plural = _("Ereignisse")
        ordering = ["at", "pk"]

    def __str__(self):
        return f"{self.from_status or '-'} → {self.to_status}"


class ConsentStatus(models.TextChoices):
    REQUESTED = "requested", _("Angefragt")
    # An admin-consent callback or the poll: Microsoft shows the app registered in the tenant, which is not
    # proof that the delegated permissions were granted (and a callback can be forged).
    REPORTED = "reported", _("Gemeldet, unbestätigt")
    # A user of the tenant signed in and Graph answered: Microsoft proved the consent.
    GRANTED = "granted", _("Erteilt")


class TenantConsent(models.Model):
    """A Microsoft tenant's admin consent for the CRM's current app.

    tenant is how the portal addresses the tenant at Microsoft (the mail
    domain, or a tenant id): the admin-consent redirect and the proof token
    use it, never a value that only the callback brought.
    """

    tenant = models.CharField(_("Mandant"), max_length=255, unique=True)
    # The directory id from Microsoft's public OpenID configuration (never from a callback),
    # recorded with the consent; domains of one directory share a consent.
    tenant_id = models.CharField(_("Mandanten-ID"), max_length=64, blank=True)
    status = models.CharField(_("Status"), max_length=20, choices=ConsentStatus.choices, default=ConsentStatus.REQUESTED)
    admin_email = models.EmailField(_("E-Mail des Administrators"), blank=True)
    requested_at = models.DateTimeField(_("Angefragt am"), auto_now_add=True)
    granted_at = models.DateTimeField(_("Erteilt am"), null=True, blank=True)
    reported_at = models.DateTimeField(_("Gemeldet am"), null=True, blank=True)
    # A user of the tenant met "Need admin approval" (a consent code, or they said so): the next users see the
    # admin path first. Only a hint for the page, cleared by a successful sign-in of a user of the tenant.
    blocked_at = models.DateTimeField(_("Zuletzt blockiert"), null=True, blank=True)
    last_link_sent_at = models.DateTimeField(_("Link zuletzt gesendet"), null=True, blank=True)
    # The consent poll's claim (compare-and-swap): one poll per tenant and interval, however many beats run.
    polled_at = models.DateTimeField(_("Zuletzt bei Microsoft geprüft"), null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("Administrator-Zustimmung")
        verbose_name_plural = _("Administrator-Zustimmungen")
        ordering = ["tenant"]

    def __str__(self):
        return self.tenant


class AdminConsentRequest(models.Model):
    """One redirect to Microsoft's admin-consent endpoint; its callback must bring back the state."""

    state = models.CharField(max_length=64, unique=True)
    consent = models.ForeignKey(TenantConsent, models.CASCADE, related_name="requests")
    migration = models.ForeignKey(Migration, models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True)


class CampaignAccount(MailAccount):
    """Every mail account as the campaign sees it: the support lists, CSV export and bulk actions
    (migration.campaign_admin). A proxy: no table of its own; sync/ keeps owning MailAccount."""

    class Meta:
        proxy = True
        verbose_name = _("Konto in der Kampagne")
        verbose_name_plural = _("Konten in der Kampagne")


class Reminder(models.Model):
    """One reminder e-mail to a user about their accounts still on V2 (who sent it, when, why)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+", verbose_name=_("Benutzer"))
    campaign = models.ForeignKey(Campaign, models.PROTECT, related_name="reminders", verbose_name=_("Kampagne"))
    # "manual" (support staff's bulk action) or a cadence step of the campaign.
    kind = models.CharField(_("Anlass"), max_length=20)
    # Addresses the mail named, for support's answer to "which accounts was I reminded about?".
    addresses = models.TextField(_("Konten"), blank=True)
    sent_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+",
                                verbose_name=_("Gesendet von"))
    # Not auto_now_add: the cadence passes its own clock (tests move "today" through a campaign).
    created_at = models.DateTimeField(_("Erstellt"), default=timezone.now)
    # Set by the worker once the mail left through the e-mail backend; empty while queued or after an error.
    sent_at = models.DateTimeField(_("Gesendet"), null=True, blank=True)
    error = models.CharField(_("Fehler"), max_length=200, blank=True)

    class Meta:
        verbose_name = _("Erinnerung")
        verbose_name_plural = _("Erinnerungen")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"], name="reminder_user_newest")]
        constraints = [
            # Each step of the cadence reaches a user once per campaign, also when the beat task runs twice.
            models.UniqueConstraint(fields=["user", "campaign", "kind"], condition=~Q(kind="manual"),
                                    name="one_reminder_per_step"),
        ]

    def __str__(self):
        return f"{self.kind} ({self.created_at:%d.%m.%Y})"
