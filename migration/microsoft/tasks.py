"""Thin Celery tasks of the Microsoft provider: ids in, one service call."""

from celery import shared_task

from migration.microsoft import consent


@shared_task(name="migration.microsoft.tasks.notify_consent_granted", acks_late=True)
def notify_consent_granted(migration_id: int) -> bool:
    return consent.send_consent_granted_mail(migration_id)


@shared_task(name="migration.microsoft.tasks.poll_admin_consents")
def poll_admin_consents() -> int:
    return len(consent.poll_admin_consents())
