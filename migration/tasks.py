"""Thin Celery tasks: ids in, one service call."""

from celery import shared_task

from migration import services, steps
from migration.microsoft import consent
from migration.microsoft import tasks as microsoft_tasks  # noqa: F401 - the worker registers them


@shared_task(name="migration.tasks.run_migration", acks_late=True, reject_on_worker_lost=True)
def run_migration(migration_id: int) -> str:
    return steps.run_migration(migration_id)


@shared_task(name="migration.tasks.sweep_stuck_migrations")
def sweep_stuck_migrations() -> int:
    consent.purge_admin_consent_requests()  # housekeeping that rides on the same beat
    return len(services.sweep_stuck_migrations())


@shared_task(name="migration.tasks.send_reminder", acks_late=True)
def send_reminder(reminder_id: int) -> bool:
    from migration import reminders

    return reminders.send(reminder_id)


@shared_task(name="migration.tasks.send_due_reminders")
def send_due_reminders() -> int:
    """Beat: the campaign's reminder step of the day (once per day, however many beats), and a re-queue of
    reminders and confirmations whose broker message was lost. Returns how many reminders it created."""
    from django.utils import timezone

    from migration import done_mail, reminder_schedule, reminders

    now = timezone.now()
    created = reminder_schedule.run_due_reminders(now=now)
    reminders.requeue_unsent(now=now)
    done_mail.requeue_unsent(now=now)  # confirmations whose broker message was lost or whose send failed
    return len(created)


@shared_task(name="migration.tasks.send_done_mail", acks_late=True)
def send_done_mail(migration_id: int) -> bool:
    from migration import done_mail

    return done_mail.send(migration_id)


@shared_task(name="migration.tasks.send_staff_digest")
def send_staff_digest() -> int:
    """Beat: the daily digest for support staff (claimed per day on the campaign). Returns mails sent."""
    from migration import staff_digest

    return staff_digest.send_digest()


@shared_task(name="migration.tasks.send_retry_mail", acks_late=True)
def send_retry_mail(migration_id: int, attempt: int) -> bool:
    from migration import retry_mail

    return retry_mail.send(migration_id, attempt)
