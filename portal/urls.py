from django.contrib import admin
from django.urls import include, path

from migration import views as migration_views
from portal import views
from sync import views as sync_views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("emails/", sync_views.message_list, name="message-list"),
    path("emails/<int:pk>/", sync_views.message_detail, name="message-detail"),
    path("einstellungen/", views.settings_index, name="settings"),
    path("einstellungen/email-synchronisierung/", migration_views.settings_page, name="settings-mail"),
    path("migration/", include("migration.urls")),
    path("health/", views.health, name="health"),
    # Microsoft Graph change notifications (push for V3 Microsoft accounts; sync.microsoft.webhook).
    path("microsoft/graph/", include("sync.microsoft.urls")),
    path("einstellungen/benachrichtigungen/", views.settings_notifications, name="settings-notifications"),
    # Django's set_language, plus the choice kept on the user's profile (for the e-mails).
    path("i18n/setlang/", views.set_language, name="set_language"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
]
