"""Included under /migration/microsoft/. The two callbacks are the redirect URIs
registered with the app in Entra ID (SITE_URL + path)."""

from django.urls import path

from migration.microsoft import views

urlpatterns = [
    path("callback/", views.callback, name="microsoft-callback"),
    path("admin-callback/", views.admin_callback, name="microsoft-admin-callback"),
    path("<int:pk>/anmelden/", views.sign_in, name="microsoft-sign-in"),
    path("<int:pk>/admin-genehmigung-erforderlich/", views.blocked, name="microsoft-blocked"),
    path("<int:pk>/admin-zustimmung/", views.admin_consent, name="microsoft-admin-consent"),
    path("<int:pk>/admin-link-senden/", views.send_admin_link, name="microsoft-send-admin-link"),
    path("admin/<str:token>/", views.admin_link, name="microsoft-admin-link"),
    path("konto/<int:account_id>/neu-verbinden/", views.reconnect, name="microsoft-reconnect"),
]
