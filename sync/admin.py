from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join
from django.utils.module_loading import import_string
from django.utils.translation import gettext_lazy as _

from sync.certificates import NotCertificates, certificates_only
from sync.models import FolderState, GraphSubscription, MailAccount, SkippedMessage, SyncedMessage
from sync.services import invalidate_banner, save_account_settings


class ReadOnlyAdmin(admin.ModelAdmin):
    """An admin page that shows records and lets nobody add, change or delete them (records the product
    writes itself: subscriptions, reminders, the campaign list)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class FolderStateInline(admin.TabularInline):
    model = FolderState
    fields = ("name", "v2_high_water", "v2_last_poll_at", "uidvalidity", "uidnext", "highestmodseq",
              "last_seen_uid", "graph_folder_id", "ews_folder_id", "v3_synced_at")
    readonly_fields = fields
    extra = 0
    can_delete = False


class MailAccountForm(forms.ModelForm):
    class Meta:
        model = MailAccount
        fields = "__all__"

    def clean_tls_ca_pem(self):
        """Certificates only, re-encoded: a private key is refused and never stored (sync.certificates)."""
        try:
            return certificates_only(self.cleaned_data["tls_ca_pem"])
        except NotCertificates as refused:
            if refused.reason == "private_key":
                self.data = self.data.copy()  # the form comes back: without the key
                self.data[self.add_prefix("tls_ca_pem")] = ""
            raise forms.ValidationError(refused.message) from None


@admin.register(MailAccount)
class MailAccountAdmin(admin.ModelAdmin):
    form = MailAccountForm
    list_display = ("address", "owner", "provider_kind", "engine", "status", "last_sync_at", "last_sync_error",
                    "last_sync_error_text")
    list_filter = ("engine", "status", "provider_kind", "provider_name")
    search_fields = ("address", "owner__email")
    # secret_encrypted is not editable and therefore never in a form or list.
    readonly_fields = ("engine", "last_sync_at", "last_sync_error", "last_sync_error_text", "v2_stopped_at",
                       "push_error", "sync_lease_until", "sync_queued_at", "skipped_messages")

    @admin.display(description=_("Fehlermeldung"))
    def last_sync_error_text(self, obj):
        """What the user reads for the code on the settings page (through SYNC_ERROR_MESSAGE: sync never
        imports migration/, which owns the texts)."""
        if not obj.last_sync_error:
            return ""
        return import_string(settings.SYNC_ERROR_MESSAGE)(obj.last_sync_error)

    @admin.display(description=_("Übersprungene Nachrichten"))
    def skipped_messages(self, obj):
        """Messages the sync could not store, with the reason (the newest 20; all in their own list)."""
        rows = obj.skipped_messages.order_by("-seen_at")[:20] if obj.pk else []
        if not rows:
            return "–"
        return format_html("<ul>{}</ul>", format_html_join(
            "", "<li>{} · {} · {} {}</li>", ((r.folder, r.reference, r.get_reason_display(), r.detail) for r in rows)))
    inlines = [FolderStateInline]

    def save_model(self, request, obj, form, change):
        if not change:
            super().save_model(request, obj, form, change)
        else:
            # A changed server, user name or certificate deletes the stored password and token (the service
            # decides, so every path that edits an account gets the same rule).
            changed = save_account_settings(account=obj, actor=f"staff:{request.user.pk}")
            if changed:
                self.message_user(request, _(
                    "Die Servereinstellungen wurden geändert: Das gespeicherte Passwort bzw. die Microsoft-Anmeldung "
                    "wurde gelöscht. Der Benutzer muss das Konto neu verbinden."), messages.WARNING)
        # Staff may give the account to someone else: both owners' banners change.
        for owner_id in {form.initial.get("owner"), obj.owner_id} - {None}:
            invalidate_banner(owner_id)

    def delete_model(self, request, obj):
        invalidate_banner(obj.owner_id)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        # The changelist's bulk delete does not go through delete_model.
        for owner_id in set(queryset.values_list("owner_id", flat=True)):
            invalidate_banner(owner_id)
        super().delete_queryset(request, queryset)


@admin.register(SyncedMessage)
class SyncedMessageAdmin(admin.ModelAdmin):
    list_display = ("subject", "sender", "account", "folder", "sent_at", "received_at", "imported_by")
    list_filter = ("imported_by",)
    search_fields = ("subject", "sender", "message_id", "account__address")
    readonly_fields = [f.name for f in SyncedMessage._meta.fields]


@admin.register(SkippedMessage)
class SkippedMessageAdmin(admin.ModelAdmin):
    list_display = ("account", "folder", "reference", "reason", "detail", "seen_at")
    list_filter = ("reason",)
    search_fields = ("account__address", "folder", "reference")
    readonly_fields = [f.name for f in SkippedMessage._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(GraphSubscription)
class GraphSubscriptionAdmin(ReadOnlyAdmin):
    """Read-only: which Microsoft accounts have push, until when, and why a subscribe failed (error_code).
    The clientState secret is never shown; beat's pass creates, renews and removes the rows."""

    list_display = ("account", "subscription_id", "expires_at", "error_code", "attempted_at", "notified_at")
    list_filter = ("error_code",)
    search_fields = ("account__address",)
    fields = list_display
    readonly_fields = list_display
