"""Django admin for support staff: follow and act on every migration."""

from collections import Counter

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect
from django.urls import path
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from migration import errors, history, services
from migration.models import Campaign, Migration, Reminder, Status
from migration.selectors import invalidate_campaign
from sync.admin import ReadOnlyAdmin
from migration import campaign_admin  # noqa: F401 - registers the campaign list and dashboard
from migration.microsoft import admin as microsoft_admin  # noqa: F401 - registers TenantConsent


admin.site.site_header = _("V3-Migrationsportal – Verwaltung")
admin.site.site_title = _("V3-Migrationsportal")
admin.site.index_title = _("Verwaltung")
admin.site.index_template = "admin/campaign_index.html"  # links the campaign dashboard


@admin.register(Migration)
class MigrationAdmin(admin.ModelAdmin):
    list_display = ("account_address", "user", "status", "provider_kind", "campaign", "error_code", "error_text",
                    "updated_at")
    # The error code too: support looks for every migration that failed the same way ("protocol", "login_slow").
    list_filter = ("status", "provider_kind", "campaign", "error_code")
    search_fields = ("account__address", "user__email", "user__username", "=error_code")
    list_select_related = ("account", "user", "campaign")
    # Everything is read-only: status changes only through the actions below,
    # which call the same services as the portal. No secret field is listed.
    fields = ("account", "user", "campaign", "status", "provider_kind", "error_code", "error_text",
              "connection_display", "detected_display", "cursor_folders", "attempts_display", "step_attempts",
              "retry_at", "created_at", "updated_at", "finished_at", "history")
    readonly_fields = fields
    actions = ["retry", "cancel"]
    # Adds "Erneut starten" / "Abbrechen" buttons to a migration's own page (migration_action_view).
    change_form_template = "admin/migration/migration/change_form.html"

    def get_urls(self):
        return [
            path("<int:pk>/aktion/<str:action>/", self.admin_site.admin_view(self.migration_action_view),
                 name="migration-admin-action"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        migration = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if migration is not None and self.has_change_permission(request, migration):
            extra["can_retry"] = migration.status == Status.FAILED
            extra["can_cancel"] = Status.CANCELLED in services.ALLOWED[migration.status]
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def migration_action_view(self, request, pk: int, action: str):
        """POST from the buttons on a migration's page: the same services as the bulk actions, the staff
        member recorded as the event's actor. GET, an unknown action or a user without change permission: 4xx."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        migration = get_object_or_404(Migration.objects.select_related("account"), pk=pk)
        if action not in ("retry", "cancel") or not self.has_change_permission(request, migration):
            raise PermissionDenied
        actor = f"staff:{request.user.pk}"
        try:
            if action == "retry":
                services.retry_migration(migration=migration, actor=actor, redetect=True)
                self.message_user(request, _("Die Migration wurde erneut gestartet."), messages.SUCCESS)
            else:
                services.cancel_migration(migration=migration, actor=actor, reason="cancelled by support")
                self.message_user(request, _("Die Migration wurde abgebrochen."), messages.SUCCESS)
        except services.MigrationError as error:
            reason = STAFF_ERRORS.get(error.code) or errors.message_for(error.code)
            self.message_user(request, _("Nicht ausgeführt: %(reason)s") % {"reason": reason}, messages.ERROR)
        except services.TransitionConflict:
            self.message_user(request, _("Nicht ausgeführt: die Migration hat inzwischen ihren Status geändert."),
                              messages.ERROR)
        return redirect("admin:migration_migration_change", pk)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # A migration and its events are the audit trail: never deleted, also not by bulk delete
        # (the action disappears) or by deleting the account in the admin (Django then refuses).
        return False

    @admin.display(description=_("Verlauf"))
    def history(self, obj):
        events = list(obj.events.all()) if obj.pk else []
        emails = history.actor_emails(event.actor for event in events)
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (_event_time(e.at), e.get_from_status_display() or "–",
             e.get_to_status_display(), history.reason_text(e.reason), history.actor_text(e.actor, emails))
            for e in events))
        return format_html('<table class="migration-history"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th>'
                           "<th>{}</th></tr></thead><tbody>{}</tbody></table>", _("Zeit"), _("Von"), _("Nach"),
                           _("Grund"), _("Auslöser"), rows)

    @admin.display(description=_("Verbindung"))
    def connection_display(self, obj):
        return _settings_list(obj.connection)

    @admin.display(description=_("Erkannte Einstellungen"))
    def detected_display(self, obj):
        return _settings_list(obj.detected)

    @admin.display(description=_("Ordner mit V3-Stand"))
    def cursor_folders(self, obj):
        return ", ".join(sorted(obj.cursors or {})) or "–"

    @admin.display(description=_("Erneute Versuche"))
    def attempts_display(self, obj):
        return obj.attempts

    @admin.display(description=_("Konto"), ordering="account__address")
    def account_address(self, obj):
        return obj.account.address

    @admin.display(description=_("Fehlermeldung"))
    def error_text(self, obj):
        return errors.message_for(obj.error_code) if obj.error_code else ""

    @admin.action(description=_("Fehlgeschlagene Migrationen erneut starten"))
    def retry(self, request, queryset):
        self._apply(request, queryset, lambda m, actor: services.retry_migration(migration=m, actor=actor, redetect=True))

    @admin.action(description=_("Migrationen abbrechen"))
    def cancel(self, request, queryset):
        self._apply(request, queryset, lambda m, actor: services.cancel_migration(
            migration=m, actor=actor, reason="cancelled by support"))

    def _apply(self, request, queryset, action):
        done, skipped = 0, Counter()
        actor = f"staff:{request.user.pk}"
        for migration in queryset.select_related("account"):
            try:
                action(migration, actor)
                done += 1
            except services.MigrationError as error:
                skipped[STAFF_ERRORS.get(error.code) or errors.message_for(error.code)] += 1
            except services.TransitionConflict:
                skipped[STAFF_ERRORS["conflict"]] += 1
        if not skipped:
            self.message_user(request, _("%(done)d ausgeführt, %(skipped)d übersprungen.")
                              % {"done": done, "skipped": 0}, messages.INFO)
            return
        # Why each was skipped, so support knows what to do next (already on V3 is not "another status").
        reasons = "; ".join(f"{count} × {reason}" for reason, count in skipped.most_common())
        self.message_user(request, _("%(done)d ausgeführt, %(skipped)d übersprungen: %(reasons)s")
                          % {"done": done, "skipped": sum(skipped.values()), "reasons": reasons}, messages.INFO)


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("name", "migrate_by", "v2_shutdown", "is_active", "reminder_days_before")
    fieldsets = [
        (None, {"fields": ("name", "migrate_by", "v2_shutdown", "is_active")}),
        (_("Erinnerungen per E-Mail"), {"fields": ("reminder_days_before", "reminder_day_after",
                                                   "reminder_on_shutdown", "reminder_min_days")}),
    ]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        invalidate_campaign()  # the banner caches the dates


@admin.register(Reminder)
class ReminderAdmin(ReadOnlyAdmin):
    """Who was reminded when, by whom and about which accounts: a record, never edited."""

    list_display = ("user", "kind", "created_at", "sent_at", "error", "sent_by")
    list_filter = ("kind", "campaign", ("sent_at", admin.EmptyFieldListFilter))
    search_fields = ("user__email", "addresses")
    list_select_related = ("user", "sent_by")
    fields = ("user", "campaign", "kind", "addresses", "created_at", "sent_at", "error", "sent_by")
    readonly_fields = fields


# Why a button on a migration's page did nothing (services.MigrationError codes).
STAFF_ERRORS = {
    "wrong_state": _("die Migration ist in einem anderen Status."),
    "already_running": _("für dieses Konto läuft bereits eine andere Migration."),
    "already_v3": _("das Konto synchronisiert bereits über V3."),
    "conflict": _("die Migration hat inzwischen ihren Status geändert."),
}


def _event_time(at) -> str:
    """An event's time in the reader's language, to the second: 01.12.2026 05:27:50, 1 Dec 2026 05:27:50."""
    at = timezone.localtime(at)
    return f"{date_format(at, 'SHORT_DATE_FORMAT')} {date_format(at, 'H:i:s')}"


def _settings_list(values: dict):
    """A JSON field of settings (no secrets are ever stored in them) as "key: value" lines."""
    if not values:
        return "–"
    return format_html("<ul>{}</ul>", format_html_join("", "<li>{}: {}</li>", sorted(
        (key, value) for key, value in values.items() if key != "tls_ca_pem")))
