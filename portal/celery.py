"""The Celery app: the worker drives migrations and the periodic mail sync."""

import os

from celery import Celery

from portal.heartbeats import WorkerHeartbeat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Every worker records a heartbeat for GET /health/ (beat does through CELERY_BEAT_SCHEDULER).
app.steps["consumer"].add(WorkerHeartbeat)


@app.on_after_configure.connect
def _configure_embedded_broker(sender, **kwargs) -> None:
    # Runs when the configuration is first read, not at import: importing
    # this module must not import Django's settings.
    from django.conf import settings

    if not str(sender.conf.broker_url).startswith("filesystem://"):
        return
    # Messages are files in folders that web and worker processes share, so no broker server is needed.
    # portal.filebroker: kombu's file-system transport, with messages handed over by rename (atomic).
    folders = {name: settings.CELERY_BROKER_DIR / name for name in ("queue", "staging", "claimed", "rejected")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    sender.conf.broker_transport = "portal.filebroker:Transport"
    sender.conf.broker_transport_options = {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "staging_folder": str(folders["staging"]),
        "claimed_folder": str(folders["claimed"]),
        "rejected_folder": str(folders["rejected"]),
        # Exchange tables (remote control, ping): kombu's default is ./control in the working directory.
        "control_folder": str(settings.CELERY_BROKER_DIR / "control"),
        "polling_interval": 0.2,
    }


app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_periodic_tasks(sender, **kwargs):
    from django.conf import settings

    sender.add_periodic_task(
        float(settings.SYNC_DISPATCH_SECONDS), sender.signature("sync.tasks.sync_all_accounts"),
        name="sync all mail accounts",
        # A fan-out that waited in the queue past the next one is dropped: the next one counts afresh.
        expires=float(settings.SYNC_DISPATCH_SECONDS),
    )
    sender.add_periodic_task(
        float(settings.CELERY_SWEEP_SECONDS), sender.signature("migration.tasks.sweep_stuck_migrations"),
        name="re-queue stuck migrations",
    )
    sender.add_periodic_task(
        float(settings.REMINDER_CHECK_SECONDS), sender.signature("migration.tasks.send_due_reminders"),
        name="campaign reminder e-mails (once a day, claimed in the database)", expires=settings.REMINDER_CHECK_SECONDS,
    )
    sender.add_periodic_task(
        float(settings.REMINDER_CHECK_SECONDS), sender.signature("sync.tasks.send_reconnect_followups"),
        name="follow-up mail for accounts still waiting to be re-connected", expires=settings.REMINDER_CHECK_SECONDS,
    )
    sender.add_periodic_task(
        float(settings.REMINDER_CHECK_SECONDS), sender.signature("migration.tasks.send_staff_digest"),
        name="daily digest for support staff (claimed per day)", expires=settings.REMINDER_CHECK_SECONDS,
    )
    sender.add_periodic_task(
        float(settings.MS_GRAPH_SUBSCRIPTION_CHECK_SECONDS), sender.signature("sync.tasks.maintain_graph_subscriptions"),
        name="create, renew and remove Microsoft Graph subscriptions (push)",
        expires=float(settings.MS_GRAPH_SUBSCRIPTION_CHECK_SECONDS),
    )
    poll = float(settings.MS_CONSENT_POLL_SECONDS)
    sender.add_periodic_task(
        poll, sender.signature("migration.microsoft.tasks.poll_admin_consents"),
        name="resume migrations after admin consent given in Entra",
        # A run that waited longer than one interval in the queue is dropped:
        # after a worker outage Microsoft gets one round of token requests, not a backlog.
        expires=poll,
    )
