"""Included under /migration/google/. The callback is the redirect URI registered with the
portal's OAuth client in the Google Cloud console (SITE_URL + path)."""

from django.urls import path

from migration.google import views

urlpatterns = [
    path("callback/", views.callback, name="google-callback"),
    path("<int:pk>/anmelden/", views.sign_in, name="google-sign-in"),
    path("konto/<int:account_id>/neu-verbinden/", views.reconnect, name="google-reconnect"),
]
