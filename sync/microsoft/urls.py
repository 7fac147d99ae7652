"""URLs Microsoft Graph posts to: change notifications and lifecycle notifications (sync.microsoft.webhook)."""

from django.urls import path

from sync.microsoft import webhook

urlpatterns = [
    path("notifications/", webhook.notifications, name="graph-notifications"),
    path("lifecycle/", webhook.lifecycle_notifications, name="graph-lifecycle"),
]
