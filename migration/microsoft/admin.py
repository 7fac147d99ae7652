"""Admin consent per Microsoft tenant, for support staff (imported by migration.admin)."""

from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _

from migration.microsoft import consent
from migration.models import TenantConsent


@admin.register(TenantConsent)
class TenantConsentAdmin(admin.ModelAdmin):
    list_display = ("tenant", "status", "waiting", "admin_email", "requested_at", "reported_at", "granted_at",
                    "blocked_at", "last_link_sent_at")
    list_filter = ("status",)
    search_fields = ("tenant", "tenant_id", "admin_email")
    # Status changes only through Microsoft's answer ("Erteilt": a user of the tenant signed in; "Gemeldet": an
    # admin-consent callback or the poll, unproven). Staff may note the admin's address: the resend goes there.
    fields = ("tenant", "tenant_id", "status", "admin_email", "requested_at", "reported_at", "granted_at",
              "blocked_at", "last_link_sent_at")
    readonly_fields = ("tenant", "tenant_id", "status", "requested_at", "reported_at", "granted_at", "blocked_at",
                       "last_link_sent_at")
    actions = ["resend_admin_link"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # A tenant's consent record is evidence of what its admin granted: kept, like migrations.
        return False

    @admin.display(description=_("Wartende Migrationen"))
    def waiting(self, obj):
        return consent.waiting_migrations(obj.tenant).count()

    @admin.action(description=_("Link für den Administrator erneut senden"))
    def resend_admin_link(self, request, queryset):
        sent, skipped = 0, 0
        for tenant_consent in queryset:
            # To the admin if known; else one message to each waiting user, who forwards it.
            count = consent.resend_admin_links(consent=tenant_consent)
            sent += count
            if not count:
                skipped += 1
        self.message_user(request, _("%(sent)d Links gesendet, %(skipped)d ohne Empfänger übersprungen.")
                          % {"sent": sent, "skipped": skipped}, messages.INFO)
