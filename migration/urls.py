from django.urls import include, path

from migration import mask, new_password, unsubscribe, views

urlpatterns = [
    path("start/<int:account_id>/", views.start, name="migration-start"),
    path("<int:pk>/", views.detail, name="migration-detail"),
    path("<int:pk>/zugangsdaten/", views.credentials, name="migration-credentials"),
    path("<int:pk>/status/", views.status, name="migration-status"),
    path("<int:pk>/wiederholen/", views.retry, name="migration-retry"),
    path("<int:pk>/abbrechen/", views.cancel, name="migration-cancel"),
    path("<int:pk>/anbieter/", mask.picker, name="migration-picker"),
    path("<int:pk>/anbieter/alle/", mask.all_providers, name="migration-all-providers"),
    path("<int:pk>/anbieter/waehlen/", mask.choose, name="migration-choose"),
    path("konto/<int:account_id>/passwort/", new_password.new_password, name="account-new-password"),
    path("erinnerungen/abbestellen/<str:token>/", unsubscribe.unsubscribe, name="reminders-unsubscribe"),
    path("microsoft/", include("migration.microsoft.urls")),
    path("google/", include("migration.google.urls")),
]
