from django.conf import settings
from django.db import connection, models
from django.utils.translation import gettext_lazy as _


class Engine(models.TextChoices):
    V2 = "v2", "V2"
    V3 = "v3", "V3"


class ProviderKind(models.TextChoices):
    IMAP = "imap", _("IMAP")
    MICROSOFT = "microsoft", _("Microsoft 365 / Outlook.com")
    EXCHANGE = "exchange", _("Microsoft Exchange")
    # Gmail / Google Workspace signed in with Google: IMAP with XOAUTH2 (sync.google).
    GOOGLE = "google", _("Google (Gmail, Google Workspace)")


class Security(models.TextChoices):
    SSL = "ssl", _("SSL/TLS")
    STARTTLS = "starttls", _("STARTTLS")


class AccountStatus(models.TextChoices):
    ACTIVE = "active", _("Aktiv")
    ERROR = "error", _("Fehler")
    STOPPED = "stopped", _("Gestoppt")
    # The provider no longer accepts the stored grant (revoked, expired): the user signs in again.
    RECONNECT = "reconnect", _("Neu verbinden")


class MailAccount(models.Model):
    """A user's mailbox connected to the CRM, synced by V2 or V3."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="mail_accounts",
                              verbose_name=_("Inhaber"))
    address = models.EmailField(_("E-Mail-Adresse"))
    provider_kind = models.CharField(_("Anbieterart"), max_length=20, choices=ProviderKind.choices)
    # Key into sync.providers.IMAP_PROVIDERS ("gmx", "webde", ...) or "other".
    provider_name = models.CharField(_("Anbieter"), max_length=40, blank=True)
    engine = models.CharField(_("Technologie"), max_length=2, choices=Engine.choices, default=Engine.V2)
    status = models.CharField(_("Status"), max_length=20, choices=AccountStatus.choices, default=AccountStatus.ACTIVE)
    imap_host = models.CharField(_("IMAP-Server"), max_length=255, blank=True)
    imap_port = models.PositiveIntegerField(_("Port"), null=True, blank=True)
    imap_security = models.CharField(_("Verschlüsselung"), max_length=10, choices=Security.choices, blank=True)
    username = models.CharField(_("Benutzername"), max_length=255, blank=True)
    # MultiFernet ciphertext of {"password": ...}; never shown anywhere.
    secret_encrypted = models.TextField(blank=True, editable=False)
    # Microsoft: MultiFernet ciphertext of {"cache": <MSAL token cache>, "home_account_id": ...};
    # Google: MultiFernet ciphertext of the grant (sync.google.oauth: refresh and access token).
    token_cache_encrypted = models.TextField(blank=True, editable=False)
    # Exchange on-premises (EWS): the service URL, "ntlm" or "basic", and the
    # customer's own CA certificate (PEM, public) when the server's chain needs it.
    ews_url = models.CharField(_("EWS-Adresse"), max_length=500, blank=True)
    ews_auth_type = models.CharField(_("EWS-Anmeldeverfahren"), max_length=10, blank=True)
    tls_ca_pem = models.TextField(_("Eigenes CA-Zertifikat (PEM)"), blank=True)
    last_sync_at = models.DateTimeField(_("Letzte Synchronisierung"), null=True, blank=True)
    last_sync_error = models.CharField(_("Letzter Fehler"), max_length=300, blank=True)
    v2_stopped_at = models.DateTimeField(_("V2 gestoppt am"), null=True, blank=True)
    # Why push cannot serve this account (a code, e.g. "ews_push_unsupported": the Exchange server refused
    # notifications): it stays on normal polling. Written by the push listener (sync.exchange.push), cleared
    # when the account's connection settings are set again.
    push_error = models.CharField(_("Push-Fehler"), max_length=40, blank=True, editable=False)
    # When the account last entered "Neu verbinden", and when its owner got the follow-up mail for that
    # (sync.notifications.send_reconnect_followups: one follow-up per time it entered, claimed by compare-and-swap).
    reconnect_since = models.DateTimeField(_("Neu verbinden nötig seit"), null=True, blank=True, editable=False)
    reconnect_followup_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # One sync run per account at a time: a run holds the lease until it ends or
    # the lease expires (a killed worker); the fan-out skips queued accounts.
    sync_lease_until = models.DateTimeField(_("Synchronisierung läuft bis"), null=True, blank=True, editable=False)
    sync_lease_token = models.CharField(max_length=32, blank=True, editable=False)
    sync_queued_at = models.DateTimeField(_("Synchronisierung eingereiht am"), null=True, blank=True, editable=False)
    # The fan-out queues the account again from this time on (sync.leases.mark_queued sets it when it
    # queues a run, sync.schedule when the run ends): a second beat by mistake, ticking in between,
    # finds it not due.
    sync_due_at = models.DateTimeField(_("Synchronisierung fällig ab"), null=True, blank=True, editable=False)
    # The adaptive interval in seconds (sync.schedule); null: the base SYNC_INTERVAL_SECONDS.
    sync_interval_seconds = models.PositiveIntegerField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("E-Mail-Konto")
        verbose_name_plural = _("E-Mail-Konten")
        ordering = ["address"]
        constraints = [models.UniqueConstraint(fields=["owner", "address"], name="account_unique_per_owner")]
        # The fan-out serves the least recently run accounts first (sync.leases).
        # The fan-out's pick and the backlog figures read the due accounts by sync_due_at.
        indexes = [models.Index(fields=["sync_lease_until"], name="account_least_recently_run"),
                   models.Index(fields=["sync_due_at"], name="account_next_due")]

    def __str__(self):
        return self.address


class FolderState(models.Model):
    """Per-folder sync state: V2's high-water mark and V3's IMAP cursor."""

    account = models.ForeignKey(MailAccount, models.CASCADE, related_name="folders")
    # The server's name (IMAP), or the path of display names below the root ("Posteingang/Projekte": Graph, EWS).
    name = models.CharField(_("Ordner"), max_length=500)
    # IMAP: RFC 8474 MAILBOXID where the server has OBJECTID (a rename keeps it).
    mailbox_id = models.CharField(max_length=255, blank=True)
    # V2 polled by date: the newest INTERNALDATE it imported in this folder.
    v2_high_water = models.DateTimeField(_("V2: neueste importierte Nachricht"), null=True, blank=True)
    v2_last_poll_at = models.DateTimeField(_("V2: letzter Abruf"), null=True, blank=True)
    # V3 cursor (RFC 3501 / RFC 7162). last_seen_uid advances with every sync.
    uidvalidity = models.BigIntegerField("UIDVALIDITY", null=True, blank=True)
    uidnext = models.BigIntegerField("UIDNEXT", null=True, blank=True)
    highestmodseq = models.BigIntegerField("HIGHESTMODSEQ", null=True, blank=True)
    last_seen_uid = models.BigIntegerField(_("Zuletzt gesehene UID"), null=True, blank=True)
    # Left by an earlier, date-window version of the handoff (no longer written): the
    # Graph engine reads such a folder whole once and clears it.
    v3_since = models.DateTimeField(null=True, blank=True)
    v3_synced_at = models.DateTimeField(_("V3: letzte Synchronisierung"), null=True, blank=True)
    # Microsoft Graph: the folder's id and the delta link the next sync follows.
    graph_folder_id = models.CharField(_("Graph-Ordner-ID"), max_length=255, blank=True)
    delta_link = models.TextField(blank=True)
    # Exchange (EWS): the folder's id and the opaque SyncFolderItems state the next sync continues from.
    ews_folder_id = models.CharField(_("EWS-Ordner-ID"), max_length=512, blank=True)
    ews_sync_state = models.TextField(blank=True)

    class Meta:
        verbose_name = _("Ordnerstand")
        verbose_name_plural = _("Ordnerstände")
        constraints = [models.UniqueConstraint(fields=["account", "name"], name="folder_unique_per_account")]

    def __str__(self):
        return self.name


class SyncedMessage(models.Model):
    """A message imported into the CRM; exactly one row per message and account."""

    account = models.ForeignKey(MailAccount, models.CASCADE, related_name="messages")
    # The message's identity (sync.identity): its Message-ID, "<id>#<fingerprint>" for a
    # second message reusing an id, or "sha256:<fingerprint>" when it has no usable id.
    dedup_key = models.CharField(max_length=300)
    # Per-field SHA-256 digests of the normalised date, sender address and subject (sync.identity.fingerprint).
    fingerprint = models.CharField(max_length=64, blank=True)
    message_id = models.CharField(max_length=998, blank=True)
    folder = models.CharField(max_length=500)
    subject = models.CharField(_("Betreff"), max_length=500, blank=True)
    sender = models.CharField(_("Von"), max_length=500, blank=True)
    recipients = models.TextField(_("An"), blank=True)
    cc = models.TextField(_("Cc"), blank=True)
    sent_at = models.DateTimeField(_("Gesendet"), null=True, blank=True)
    received_at = models.DateTimeField(_("Empfangen"), null=True)
    size = models.PositiveIntegerField(default=0)
    provider_uid = models.BigIntegerField(null=True, blank=True)
    # Graph's immutable id or the EWS item id: how the body is fetched when a user opens the message.
    provider_id = models.CharField(max_length=512, blank=True)
    imported_by = models.CharField(max_length=2, choices=Engine.choices)
    imported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("Synchronisierte Nachricht")
        verbose_name_plural = _("Synchronisierte Nachrichten")
        constraints = [models.UniqueConstraint(fields=["account", "dedup_key"], name="message_unique_per_account")]
        # The message list's order per account, (account, received_at DESC NULLS LAST, id DESC), is the
        # index message_newest_first_nulls_last, created in SQL by migration 0009 (NULLS LAST per database).
        indexes = [
            # Graph delta entries and opened messages are looked up by the provider's id.
            models.Index(fields=["account", "provider_id"], name="message_provider_id",
                         condition=~models.Q(provider_id="")),
            # A message a source delivers without its Message-ID is looked up by its fingerprint.
            models.Index(fields=["account", "fingerprint"], name="message_fingerprint"),
        ]

    def __str__(self):
        return self.subject or self.dedup_key


class SkipReason(models.TextChoices):
    UNREADABLE = "unreadable", _("Nicht lesbar")
    STORE_FAILED = "store_failed", _("Nicht speicherbar")
    GONE = "gone", _("Beim Abruf nicht mehr vorhanden")
    FOLDER_UNREADABLE = "folder_unreadable", _("Ordner nicht lesbar")
    FOLDER_NAME_TOO_LONG = "folder_name_too_long", _("Ordnername zu lang")
    # Bigger than IMAP_MAX_MESSAGE_BYTES (or announced so): never read into memory.
    TOO_LARGE = "too_large", _("Zu groß")


class SkippedMessage(models.Model):
    """A message a sync run could not store: the reason for support staff; the run went on."""

    account = models.ForeignKey(MailAccount, models.CASCADE, related_name="skipped_messages",
                                verbose_name=_("E-Mail-Konto"))
    folder = models.CharField(_("Ordner"), max_length=500)
    # "uid:<UIDVALIDITY>:<UID>" for IMAP, the provider's id for Graph and EWS.
    reference = models.CharField(_("Verweis"), max_length=600)
    reason = models.CharField(_("Grund"), max_length=40, choices=SkipReason.choices)
    detail = models.CharField(_("Einzelheiten"), max_length=300, blank=True)
    seen_at = models.DateTimeField(_("Zuletzt gesehen"), auto_now=True)

    class Meta:
        verbose_name = _("Übersprungene Nachricht")
        verbose_name_plural = _("Übersprungene Nachrichten")
        constraints = [
            models.UniqueConstraint(fields=["account", "folder", "reference"], name="skipped_unique_per_account")
        ]

    def __str__(self):
        return f"{self.folder} {self.reference}: {self.reason}"


class MessageBody(models.Model):
    """A message's content, fetched from the provider when a user first opens it, then kept."""

    message = models.OneToOneField(SyncedMessage, models.CASCADE, primary_key=True, related_name="body")
    text = models.TextField(blank=True)
    # Already sanitized (nh3): safe to render; remote images are removed unless the user allows them.
    html = models.TextField(blank=True)
    # [{"name": str, "content_type": str, "size": int (bytes)}]
    attachments = models.JSONField(default=list, blank=True)
    fetched_at = models.DateTimeField(auto_now=True)


class GraphSlot(models.Model):
    """One of a mailbox's slots for concurrent Microsoft Graph requests (sync.microsoft.slots).

    Rows are created per mailbox and slot number once and reused; holder is ""
    when free. expires_at bounds how long a holder that died (a killed
    process) keeps the slot.
    """

    mailbox = models.CharField(max_length=64)  # sha256 of the mailbox's key, hex
    slot = models.PositiveSmallIntegerField()
    holder = models.CharField(max_length=32, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mailbox", "slot"], name="graph_slot_unique")]

    def __str__(self):
        return f"{self.mailbox[:12]}#{self.slot}"


class GraphSubscription(models.Model):
    """A Microsoft Graph change-notification subscription on a V3 Microsoft account's inbox messages.

    One row per account (sync.microsoft.subscriptions). subscription_id is ""
    while none is live (never created, removed, or the last try failed:
    error_code says why, attempted_at when). client_state_encrypted is the
    MultiFernet ciphertext of {"client_state": ...}, the per-subscription
    secret Graph repeats in every notification ("Receive change
    notifications through webhooks": clientState, at most 128 characters).
    """

    account = models.OneToOneField(MailAccount, models.CASCADE, related_name="graph_subscription")
    subscription_id = models.CharField(_("Abonnement-ID"), max_length=200, blank=True)
    client_state_encrypted = models.TextField(blank=True, editable=False)
    expires_at = models.DateTimeField(_("Abonnement gültig bis"), null=True, blank=True)
    error_code = models.CharField(_("Letzter Fehler"), max_length=60, blank=True)
    attempted_at = models.DateTimeField(_("Letzter Versuch"), null=True, blank=True)
    notified_at = models.DateTimeField(_("Letzte Benachrichtigung"), null=True, blank=True)

    class Meta:
        verbose_name = _("Graph-Abonnement")
        verbose_name_plural = _("Graph-Abonnements (Push für Microsoft)")
        constraints = [models.UniqueConstraint(fields=["subscription_id"], condition=~models.Q(subscription_id=""),
                                               name="graph_subscription_id_unique")]

    def __str__(self):
        return f"{self.account_id}:{self.subscription_id or '-'}"


class AttemptBudget(models.Model):
    """Connection attempts counted for one key in one fixed window (sync.egress.check_rate).

    key: "user:<id>", "dest:<address>" (an IPv4 address or an IPv6 /64) or
    "dest:name:<host>"; window: Unix time // RATE_WINDOW_SECONDS. In the
    database so that every process of every deployment counts together (the
    embedded default has no shared cache); rows of past windows are deleted as
    new windows start.
    """

    key = models.CharField(max_length=255)
    window = models.BigIntegerField()
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "window"], name="attempt_budget_unique")]

    def __str__(self):
        return f"{self.key} @{self.window}: {self.attempts}"

    @classmethod
    def _add(cls, *, key: str, window: int, limit: int | None = None) -> int | None:
        """One atomic upsert adding an attempt (only below `limit`, if given); the new count, or None if refused."""
        table, quote = cls._meta.db_table, connection.ops.quote_name
        below = f"WHERE {quote(table)}.{quote('attempts')} < %s " if limit is not None else ""
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {quote(table)} ({quote('key')}, {quote('window')}, {quote('attempts')}) "
                f"VALUES (%s, %s, 1) ON CONFLICT ({quote('key')}, {quote('window')}) "
                f"DO UPDATE SET {quote('attempts')} = {quote(table)}.{quote('attempts')} + 1 "
                f"{below}RETURNING {quote('attempts')}",
                [key, window] + ([limit] if limit is not None else []),
            )
            row = cursor.fetchone()
        return row[0] if row is not None else None

    @classmethod
    def take(cls, *, key: str, window: int, limit: int) -> bool:
        """Add one attempt to `key` in `window` if it holds fewer than `limit`; whether it did.

        One conditional upsert (INSERT ... ON CONFLICT DO UPDATE ... WHERE, PostgreSQL and SQLite >= 3.35):
        concurrent takes from any number of processes never put more than `limit` into a window.
        """
        return cls._add(key=key, window=window, limit=limit) is not None

    @classmethod
    def count(cls, *, key: str, window: int) -> int:
        """Add one attempt and return the window's attempts so far, this one included.

        One INSERT ... ON CONFLICT DO UPDATE ... RETURNING (PostgreSQL, and
        SQLite >= 3.35): atomic, so concurrent attempts from any number of
        processes are counted exactly. The first attempt of a window deletes
        the rows of windows before the previous one.
        """
        attempts = cls._add(key=key, window=window)
        if attempts == 1:
            cls.objects.filter(window__lt=window - 1).delete()
        return attempts
