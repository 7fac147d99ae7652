"""Django admin for support staff: follow and act on every migration."""

from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _

from migration import errors, services
from migration.models import Campaign, Migration, MigrationEvent
from migration.selectors import invalidate_campaign
from migration.microsoft import admin as microsoft_admin  # noqa: F401 - registers TenantConsent


class MigrationEventInline(admin.TabularInline):
    model = MigrationEvent
    fields = ("at", "from_status", "to_status", "reason", "actor")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Migration)
class MigrationAdmin(admin.ModelAdmin):
    list_display = ("account_address", "user", "status", "provider_kind", "campaign", "error_text", "updated_at")
    list_filter = ("status", "provider_kind", "campaign")
    search_fields = ("account__address", "user__email", "user__username")
    list_select_related = ("account", "user", "campaign")
    # Everything is read-only: status changes only through the actions below,
    # which call the same services as the portal. No secret field is listed.
    fields = ("account", "user", "campaign", "status", "provider_kind", "error_code", "error_text",
              "connection", "detected", "cursors", "attempts", "step_attempts", "retry_at", "created_at", "updated_at",
              "finished_at")
    readonly_fields = fields
    inlines = [MigrationEventInline]
    actions = ["retry", "cancel"]

    def has_add_permission(self, request):
        return False

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
        done, skipped = 0, 0
        actor = f"staff:{request.user.pk}"
        for migration in queryset.select_related("account"):
            try:
                action(migration, actor)
                done += 1
            except (services.MigrationError, services.TransitionConflict):
                skipped += 1
        self.message_user(request, _("%(done)d ausgeführt, %(skipped)d übersprungen (anderer Status).")
                          % {"done": done, "skipped": skipped}, messages.INFO)


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("name", "migrate_by", "v2_shutdown", "is_active")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        invalidate_campaign()  # the banner caches the dates
