"""The confirmation e-mail after a finished migration: "<address> now syncs through V3".

Queued after the commit of the transition to done (steps._handing_over); the
task claims the migration by compare-and-swap on done_mail_sent_at, so a
task delivered twice sends one mail. If the mail server refuses, the claim is
released and the hourly beat (requeue_unsent) tries again for a day.
"""

import logging
from datetime import datetime, timedelta

from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from migration.models import Migration, Status
from portal import mail, profiles
from sync import queue

logger = logging.getLogger(__name__)

TASK = "migration.tasks.send_done_mail"


def enqueue_on_commit(migration_id: int) -> None:
    """Queue the mail once the current transaction commits (a broker outage is logged; requeue_unsent retries)."""
    from migration.tasks import send_done_mail

    queue.publish_on_commit(lambda: send_done_mail.delay(migration_id), what=f"done mail of {migration_id}")


def requeue_unsent(*, now: datetime) -> list[int]:
    """Queue again the mails of migrations finished in the last day, at least 15 minutes ago, still unsent."""
    ids = list(Migration.objects.filter(status=Status.DONE, done_mail_sent_at__isnull=True,
                                        finished_at__lt=now - timedelta(minutes=15),
                                        finished_at__gte=now - timedelta(days=1)).values_list("pk", flat=True))
    for pk in ids:
        enqueue_on_commit(pk)
    return ids


def send(migration_id: int) -> bool:
    """Tell the user their account now syncs through V3, once. Returns whether this call sent the mail."""
    now = timezone.now()
    if not Migration.objects.filter(pk=migration_id, status=Status.DONE, done_mail_sent_at__isnull=True).update(
            done_mail_sent_at=now):
        return False
    migration = Migration.objects.select_related("user", "account").get(pk=migration_id)
    if not migration.user.email:
        return False
    with profiles.in_language_of(migration.user):
        subject = _("Migration abgeschlossen: %(address)s synchronisiert jetzt über V3") % {
            "address": migration.account.address}
        body = _(
            "Guten Tag,\n\ndie E-Mail-Synchronisierung von %(address)s läuft jetzt über V3. Sie müssen nichts weiter "
            "tun: neue E-Mails erscheinen wie bisher im CRM, keine geht verloren und keine erscheint doppelt.\n\n"
            "Ihre Konten sehen Sie unter Einstellungen → Persönliche E-Mail-Synchronisierung:\n%(link)s\n"
        ) % {"address": migration.account.address, "link": mail.absolute_url(reverse("settings-mail"))}
    try:
        mail.send(to=[migration.user.email], subject=subject, body=body)
    except OSError as error:
        Migration.objects.filter(pk=migration_id, done_mail_sent_at=now).update(done_mail_sent_at=None)
        logger.warning("done mail of migration %s not sent: %s", migration_id, type(error).__name__)
        return False
    return True
