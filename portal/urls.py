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
    path("i18n/", include("django.conf.urls.i18n")),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
]
