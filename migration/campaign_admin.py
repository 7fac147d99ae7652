"""Support staff run the campaign here: the dashboard, the account list behind each of its numbers,
CSV export of any filtered list, and bulk actions that go through the same services as the portal."""

import csv
from datetime import timedelta

from django.contrib import admin, messages
from django.http import StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _

from migration import burndown_chart, campaign, errors, reminders, services
from migration.campaign import CampaignState
from migration.models import ACTIVE_STATUSES, CampaignAccount, Migration, Reminder, Status
from migration.selectors import current_campaign
from sync.models import Engine, ProviderKind
from sync.admin import ReadOnlyAdmin
from sync.selectors import sync_backlog

NEVER_STARTED = "never_started"


class StateFilter(admin.SimpleListFilter):
    title = _("Stand in der Kampagne")
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [*CampaignState.CHOICES, (NEVER_STARTED, _("Nie begonnen (keine Migration)"))]

    def queryset(self, request, queryset):
        if self.value() == NEVER_STARTED:
            return queryset.filter(engine=Engine.V2, latest_migration_id__isnull=True)
        if self.value() in CampaignState.LABELS:
            return queryset.filter(campaign_state=self.value())
        return queryset


STUCK_DAYS = [1, 3, 7, 14]


class StuckFilter(admin.SimpleListFilter):
    title = _("Hängt seit")
    parameter_name = "stuck_days"

    def lookups(self, request, model_admin):
        return [(str(days), _("mehr als %(days)d Tag(en)") % {"days": days}) for days in STUCK_DAYS]

    def queryset(self, request, queryset):
        if self.value() and self.value().isdigit():
            return campaign.stuck_since(queryset, timezone.now() - timedelta(days=int(self.value())))
        return queryset


class DomainFilter(admin.SimpleListFilter):
    """The mail domain (for Microsoft 365: the tenant the portal addresses)."""

    title = _("Mandant / Mail-Domain")
    parameter_name = "domain"

    def lookups(self, request, model_admin):
        rows = campaign.overview(domain_limit=30).domains
        found = [(row.domain, row.domain) for row in rows]
        if self.value() and self.value() not in {d for d, _label in found}:
            found.append((self.value(), self.value()))  # linked from the dashboard: keep it selectable
        return found

    def queryset(self, request, queryset):
        return queryset.filter(domain=self.value().lower()) if self.value() else queryset


class ErrorFilter(admin.SimpleListFilter):
    title = _("Fehler der letzten Migration")
    parameter_name = "error"

    def lookups(self, request, model_admin):
        # order_by(): Migration's default ordering would make DISTINCT keep one row per migration.
        codes = Migration.objects.exclude(error_code="").order_by().values_list("error_code", flat=True).distinct()
        return [(code, Truncator(f"{code}: {errors.message_for(code)}").chars(48)) for code in sorted(codes)]

    def queryset(self, request, queryset):
        return queryset.filter(latest_error=self.value()) if self.value() else queryset


CSV_COLUMNS = [
    (_("E-Mail-Adresse"), lambda a: a.address),
    (_("Benutzer"), lambda a: a.owner.email),
    (_("Anbieterart"), lambda a: a.get_provider_kind_display()),
    (_("Mandant / Mail-Domain"), lambda a: a.domain),
    (_("Technologie"), lambda a: a.get_engine_display()),
    (_("Stand in der Kampagne"), lambda a: str(CampaignState.LABELS[a.campaign_state])),
    (_("Fehler"), lambda a: a.latest_error or ""),
    (_("Fehlermeldung"), lambda a: str(errors.message_for(a.latest_error)) if a.latest_error else ""),
    (_("Migration zuletzt geändert"), lambda a: timezone.localtime(a.latest_updated).strftime("%d.%m.%Y %H:%M")
     if a.latest_updated else ""),
]


def _cell(value: str) -> str:
    # Excel runs a cell that starts with = + - @ as a formula (OWASP "CSV injection"): quote it as text.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


class _Echo:
    def write(self, value):
        return value


def csv_response(queryset, filename: str) -> StreamingHttpResponse:
    """The accounts as CSV for Excel: UTF-8 with BOM (so umlauts open right), ';' as German Excel expects."""
    writer = csv.writer(_Echo(), delimiter=";")

    def rows():
        yield "\ufeff" + writer.writerow([str(title) for title, _value in CSV_COLUMNS])
        for account in queryset.select_related("owner").iterator(chunk_size=500):
            yield writer.writerow([_cell(str(value(account))) for _title, value in CSV_COLUMNS])

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@admin.register(CampaignAccount)
class CampaignAccountAdmin(ReadOnlyAdmin):
    list_display = ("address", "owner_email", "provider_kind", "state", "error_text", "latest_change")
    list_filter = (StateFilter, StuckFilter, "provider_kind", "engine", DomainFilter, ErrorFilter)
    search_fields = ("address", "owner__email")
    list_select_related = ("owner",)
    list_per_page = 100
    actions = ["send_reminder", "retry", "cancel", "export_selected"]
    change_list_template = "admin/campaign/change_list.html"
    # Read-only: the account's settings are edited under "E-Mail-Konten" (where a server change clears its secret).
    fields = ("address", "owner", "provider_kind", "engine", "status", "last_sync_at", "last_sync_error")
    readonly_fields = fields

    def get_queryset(self, request):
        return campaign.campaign_accounts()

    def get_urls(self):
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="campaign-dashboard"),
            path("export/", self.admin_site.admin_view(self.export_view), name="campaign-export"),
            *super().get_urls(),
        ]

    @admin.display(description=_("Benutzer"), ordering="owner__email")
    def owner_email(self, obj):
        return obj.owner.email

    @admin.display(description=_("Stand in der Kampagne"), ordering="campaign_state")
    def state(self, obj):
        return CampaignState.LABELS[obj.campaign_state]

    @admin.display(description=_("Fehlermeldung"))
    def error_text(self, obj):
        if not obj.latest_error:
            return ""
        # The full text is in the migration and the CSV; the list stays one line per account.
        text = str(errors.message_for(obj.latest_error))
        return format_html('<span title="{}">{} ({})</span>', text, Truncator(text).chars(60), obj.latest_error)

    @admin.display(description=_("Migration zuletzt geändert"), ordering="latest_updated")
    def latest_change(self, obj):
        return date_format(timezone.localtime(obj.latest_updated), "d.m.Y H:i") if obj.latest_updated else "–"

    # --- bulk actions: each through a service, each recording who did it ---

    @admin.action(description=_("Erinnerung senden"))
    def send_reminder(self, request, queryset):
        # One mail per user, naming all their V2 accounts; users without one are skipped by the service.
        owners = set(queryset.values_list("owner_id", flat=True))
        sent, skipped = reminders.remind(user_ids=owners, sent_by=request.user)
        self.message_user(request, _("%(sent)d Erinnerungen gesendet, %(skipped)d Benutzer übersprungen (in den "
                                     "letzten %(days)d Tag(en) schon erinnert, abbestellt oder kein Konto auf V2).")
                          % {"sent": sent, "skipped": skipped, "days": current_campaign().reminder_min_days}, messages.INFO)

    @admin.action(description=_("Erneut starten (fehlgeschlagene)"))
    def retry(self, request, queryset):
        migrations = Migration.objects.filter(pk__in=queryset.values("latest_migration_id"), status=Status.FAILED)
        self._apply(request, queryset, migrations, lambda m, actor: services.retry_migration(
            migration=m, actor=actor, redetect=True))

    @admin.action(description=_("Laufende Migration abbrechen"))
    def cancel(self, request, queryset):
        migrations = Migration.objects.filter(account__in=queryset.values("pk"), status__in=ACTIVE_STATUSES)
        self._apply(request, queryset, migrations, lambda m, actor: services.cancel_migration(
            migration=m, actor=actor, reason="cancelled by support"))

    @admin.action(description=_("Auswahl als CSV exportieren"))
    def export_selected(self, request, queryset):
        return csv_response(queryset, "konten-auswahl.csv")

    def _apply(self, request, queryset, migrations, action):
        done, actor = 0, f"staff:{request.user.pk}"
        for migration in migrations.select_related("account"):
            try:
                action(migration, actor)
                done += 1
            except (services.MigrationError, services.TransitionConflict):
                pass
        self.message_user(request, _("%(done)d ausgeführt, %(skipped)d übersprungen (anderer Status).")
                          % {"done": done, "skipped": queryset.count() - done}, messages.INFO)

    # --- the CSV of the filtered list and the dashboard ---

    def export_view(self, request):
        """The changelist's own filters and search (same query string) as CSV, all pages."""
        changelist = self.get_changelist_instance(request)
        return csv_response(changelist.get_queryset(request), "konten.csv")

    def dashboard_view(self, request):
        current = current_campaign()
        overview = campaign.overview()
        bd = campaign.burn_down(current)
        chart = burndown_chart.geometry(bd, labels={
            "migrate_by": _("Migrieren bis %(date)s") % {"date": current.migrate_by.strftime("%d.%m.")},
            "shutdown": _("V2-Abschaltung %(date)s") % {"date": current.v2_shutdown.strftime("%d.%m.")},
            "today": _("Heute"),
        })
        list_url = reverse("admin:migration_campaignaccount_changelist")
        # The same figures as GET /health/ (two queries); V2 polls until this campaign's shutdown date.
        backlog = sync_backlog(v2_running=timezone.localdate() < current.v2_shutdown)

        def link(**params):
            return f"{list_url}?{urlencode(params)}" if params else list_url

        states = [{"key": key, "label": label, "count": overview.by_state.get(key, 0), "url": link(state=key)}
                  for key, label in CampaignState.CHOICES]
        providers = [{"label": label, "total": sum(overview.by_provider.get(kind, {}).values()),
                      "url": link(provider_kind__exact=kind),
                      "cells": [{"count": overview.by_provider.get(kind, {}).get(key, 0),
                                 "url": link(provider_kind__exact=kind, state=key)} for key, _l in CampaignState.CHOICES]}
                     for kind, label in ProviderKind.choices if kind in overview.by_provider]
        domains = [{"domain": row.domain, "consent": row.consent, "remaining": row.remaining,
                    "providers": ", ".join(str(ProviderKind(p).label) for p in sorted(row.providers)),
                    "url": link(domain=row.domain),
                    "cells": [{"count": row.counts.get(key, 0), "url": link(domain=row.domain, state=key)}
                              for key, _l in CampaignState.CHOICES]}
                   for row in overview.domains]
        context = {
            **self.admin_site.each_context(request),
            "title": _("Kampagne: %(name)s") % {"name": current.name},
            "campaign": current, "overview": overview, "states": states, "providers": providers,
            "domains": domains, "state_labels": [label for _k, label in CampaignState.CHOICES],
            "on_v2_url": link(engine__exact=Engine.V2), "never_url": link(state=NEVER_STARTED),
            "stuck": campaign.oldest_stuck(), "never": campaign.never_started(), "now": timezone.now(),
            "bd": bd, "chart": chart, "list_url": list_url,
            "recent_reminders": Reminder.objects.select_related("user", "sent_by")[:10],
            "sync_backlog": backlog,
            "oldest_due_since": timezone.now() - timedelta(seconds=backlog["oldest_due_seconds"]),
        }
        return TemplateResponse(request, "admin/campaign/dashboard.html", context)
