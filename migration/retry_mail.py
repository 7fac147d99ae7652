"""The e-mail a user gets when support starts their failed migration again.

Queued after the commit of a staff retry (services.retry_migration with a
"staff:<id>" actor), so the user knows why the migration moves again and
where to continue (a retry may wait for their password or sign-in). One mail
per retry: the task claims (migration, attempt) in the shared cache, so a
task delivered twice sends once.
"""

import logging

from django.core.cache import cache
from django.urls import reverse
from django.utils.translation import gettext as _

from migration.models import Migration
from portal import mail, profiles
from sync import queue

logger = logging.getLogger(__name__)

CLAIM_SECONDS = 7 * 24 * 3600


def enqueue_on_commit(migration_id: int, attempt: int) -> None:
    """Queue the mail once the current transaction commits (a broker outage is logged, not raised)."""
    from migration.tasks import send_retry_mail

    queue.publish_on_commit(lambda: send_retry_mail.delay(migration_id, attempt),
                            what=f"retry mail of migration {migration_id}")


def send(migration_id: int, attempt: int) -> bool:
    """Tell the user support started the migration again, once per attempt. Returns whether this call sent it.

    Raises nothing for a refused or unreachable mail server: the claim is
    released and the failure logged (the migration page shows the same state).
    """
    key = f"retry-mail:{migration_id}:{attempt}"
    if not cache.add(key, 1, CLAIM_SECONDS):
        return False  # sent (or being sent) by another delivery of this task
    migration = Migration.objects.select_related("user", "account").filter(pk=migration_id).first()
    if migration is None or not migration.user.email:
        return False
    with profiles.in_language_of(migration.user):
        subject = _("Ihre Migration von %(address)s wurde erneut gestartet") % {"address": migration.account.address}
        body = _(
            "Guten Tag,\n\nder Support hat die Migration von %(address)s zu V3 erneut gestartet. Falls dafür Ihre "
            "Zugangsdaten oder Ihre Anmeldung nötig sind, sehen Sie das hier:\n%(link)s\n"
        ) % {"address": migration.account.address,
             "link": mail.absolute_url(reverse("migration-detail", args=[migration.pk]))}
    try:
        mail.send(to=[migration.user.email], subject=subject, body=body)
    except OSError as error:
        cache.delete(key)
        logger.warning("retry mail of migration %s not sent: %s", migration_id, type(error).__name__)
        return False
    return True
