"""The demo: its logins, mailboxes and mail, and the CRM data that goes with them.

demo_mailserver puts the mail into a local Dovecot, demo_data creates the CRM
side; both read the constants here, so addresses and passwords always agree.
Nothing here runs in production.
"""

import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from migration.logins import save_login
from migration.models import Campaign
from migration.selectors import current_campaign, invalidate_campaign
from portal.devservers import make_message
from sync import services as sync_services
from sync import v2
from sync.identity import FetchedMessage
from sync.imap.client import ImapSettings
from sync.models import AccountStatus, Engine, FolderState, MailAccount, SyncedMessage

DEMO_USER = ("demo@example.com", "demo-passwort-1")
DEMO_STAFF = ("support@example.com", "support-passwort-1")
DEMO_MAILBOXES = {"anna@demo.localhost": "anna-imap-1", "vertrieb@demo.localhost": "vertrieb-imap-1"}
# A V2 Microsoft 365 account; its mailbox is the demo tenant ./scripts/run serves (tests/fakes/demo_microsoft.py,
# a test double: the portal reaches it only through the MS_* settings the run command sets).
DEMO_M365_ACCOUNT = "ben@demo-m365.localhost"
DEMO_HOST = "127.0.0.1"
DEMO_PORT = 1143  # STARTTLS
DEMO_TLS_PORT = 1993  # implicit TLS: what the demo accounts use


@dataclass(frozen=True)
class DemoMessage:
    slug: str
    subject: str
    sender: str
    age: timedelta
    with_message_id: bool = True

    def message_id(self, mailbox: str) -> str:
        # Fixed ids: demo_data's stand-in history and the real mail dedupe against each other.
        return f"<{self.slug}.{mailbox.split('@')[0]}@demo.localhost>" if self.with_message_id else ""


SEED_MESSAGES = (
    DemoMessage("angebot", "Angebot 2025-118 für die Wartung", "Jonas Weber <j.weber@kunde-nord.example>",
                timedelta(days=6, hours=3)),
    DemoMessage("rechnung", "Rückfrage zur Rechnung 4711", "buchhaltung@lieferant.example", timedelta(days=5, hours=7)),
    DemoMessage("termin", "Terminvorschlag Kick-off", "Petra Lang <petra.lang@agentur.example>",
                timedelta(days=4, hours=1)),
    DemoMessage("vertrag", "Vertragsentwurf (Version 3)", "recht@kunde-sued.example", timedelta(days=3, hours=5)),
    DemoMessage("newsletter", "Ihr Newsletter im Juli", "news@messe.example", timedelta(days=2, hours=9),
                with_message_id=False),  # some senders omit the header: the dedup key falls back to a hash
    DemoMessage("lieferung", "Lieferung verschoben auf Donnerstag", "versand@lieferant.example",
                timedelta(days=1, hours=4)),
    DemoMessage("feedback", "Feedback zur Präsentation", "Jonas Weber <j.weber@kunde-nord.example>",
                timedelta(hours=20)),
    DemoMessage("rueckruf", "Bitte um Rückruf", "Empfang <empfang@kunde-west.example>", timedelta(hours=2)),
)


def seed_messages(mailbox: str, now: datetime) -> list[tuple[bytes, datetime]]:
    """The first mail of a demo mailbox: (raw message, received at)."""
    return [
        (make_message(subject=m.subject, sender=m.sender, to=mailbox, message_id=m.message_id(mailbox) or None,
                      date=now - m.age, body=f"{m.subject}\n\nViele Grüße"), now - m.age)
        for m in SEED_MESSAGES
    ]


def new_message(mailbox: str, number: int, now: datetime) -> bytes:
    """What `demo_mailserver --deliver N` sends: easy to spot in the CRM."""
    return make_message(subject=f"Neue Nachricht {number} ({timezone.localtime(now):%H:%M:%S})",
                        sender="Demo-Absender <absender@demo.localhost>", to=mailbox, date=now,
                        body="Diese Nachricht kam nach dem Einrichten der Demo an.")


@dataclass
class DemoReport:
    campaign: Campaign | None = None
    server_running: bool = False
    lines: list[str] = field(default_factory=list)


def server_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def set_up_demo(*, host: str = DEMO_HOST, tls_port: int = DEMO_TLS_PORT, keep_campaign: bool = False) -> DemoReport:
    """Create or refresh the demo; safe to run again, and keeps a user's migration progress."""
    report = DemoReport()
    with transaction.atomic():
        user, _ = save_login(email=DEMO_USER[0], password=DEMO_USER[1], validate=False)
        save_login(email=DEMO_STAFF[0], password=DEMO_STAFF[1], superuser=True, validate=False)
        report.campaign = _ensure_campaign(keep_existing=keep_campaign)
        v2_running = report.campaign.v2_shutdown > timezone.localdate()
        accounts = _ensure_accounts(user, host=host, tls_port=tls_port, v2_running=v2_running, report=report)
        microsoft = _ensure_microsoft_account(user, v2_running=v2_running, report=report)
        sync_services.invalidate_banner(user.pk)
    # The polls talk to the mail server: outside the transaction, like the worker does.
    report.server_running = server_answers(host, tls_port)
    for account in accounts:
        if report.server_running:
            added = v2.poll(account)
            account.refresh_from_db(fields=["last_sync_error"])
            if not account.last_sync_error:
                report.lines.append(f"{account.address}: V2 poll imported {added} new message(s)")
                continue
            report.lines.append(f"{account.address}: V2 poll failed ({account.last_sync_error}); check "
                                "MAIL_TLS_CA_FILE and EGRESS_ALLOW_NETWORKS")
        seeded = _stand_in_history(account)
        if seeded:
            report.lines.append(f"{account.address}: {seeded} stand-in message(s) as V2 history")
    # V2 reached Microsoft mailboxes through a connector the demo does not have: its history is the stand-in
    # (the demo tenant's inbox holds the same messages, so the V3 handoff dedupes against them).
    if microsoft is not None and (seeded := _stand_in_history(microsoft)):
        report.lines.append(f"{microsoft.address}: {seeded} stand-in message(s) as V2 history")
    return report


def _ensure_microsoft_account(user, *, v2_running: bool, report: DemoReport) -> MailAccount | None:
    """The V2 Microsoft 365 account; None when it is already on V3 (left exactly as it is)."""
    account = MailAccount.objects.select_for_update().filter(owner=user, address=DEMO_M365_ACCOUNT).first()
    if account is not None and account.engine == Engine.V3:
        report.lines.append(f"{DEMO_M365_ACCOUNT}: already migrated to V3, left as it is")
        return None
    account = account or MailAccount(owner=user, address=DEMO_M365_ACCOUNT, provider_kind="microsoft",
                                     engine=Engine.V2)
    if v2_running and account.status == AccountStatus.STOPPED:
        account.status = AccountStatus.ACTIVE
    account.save()
    return account


def _ensure_campaign(*, keep_existing: bool) -> Campaign:
    if keep_existing and Campaign.objects.filter(is_active=True).exists():
        return current_campaign()
    # Relative to today, so the banner shows a live deadline whenever the demo is set up.
    today = timezone.localdate()
    campaign = current_campaign()
    Campaign.objects.filter(pk=campaign.pk).update(migrate_by=today + timedelta(days=14),
                                                   v2_shutdown=today + timedelta(days=30))
    invalidate_campaign()
    campaign.refresh_from_db()
    return campaign


def _ensure_accounts(user, *, host: str, tls_port: int, v2_running: bool, report: DemoReport) -> list[MailAccount]:
    """The V2 accounts to poll; an account already migrated to V3 is left exactly as it is."""
    on_v2 = []
    for address, password in DEMO_MAILBOXES.items():
        account = MailAccount.objects.select_for_update().filter(owner=user, address=address).first()
        if account is not None and account.engine == Engine.V3:
            report.lines.append(f"{address}: already migrated to V3, left as it is")
            continue
        account = account or MailAccount(owner=user, address=address, provider_kind="imap", engine=Engine.V2)
        account.provider_name = "other"
        if v2_running and account.status == AccountStatus.STOPPED:
            account.status = AccountStatus.ACTIVE  # stopped by an earlier, now moved, shutdown date
        server = ImapSettings(host=host, port=tls_port, security="ssl", username=address)
        sync_services.set_imap_credentials(account=account, server=server, password=password)
        account.save()
        on_v2.append(account)
    return on_v2


def _stand_in_row(account: MailAccount, message: FetchedMessage) -> SyncedMessage:
    return SyncedMessage(account=account, dedup_key=message.dedup_key, fingerprint=message.fingerprint,
                         message_id=message.message_id, folder=v2.V2_FOLDER, subject=message.subject,
                         sender=message.sender, received_at=message.received_at, imported_by=Engine.V2)


def _stand_in_history(account: MailAccount) -> int:
    """Without a mail server: the seed mail as V2 history, so "E-Mails" is not empty.

    Only into an account without any messages, and with the seed's own
    Message-IDs, so the real mail dedupes against them once the server runs.
    """
    if SyncedMessage.objects.filter(account=account).exists():
        return 0
    now = timezone.now()
    rows = [
        _stand_in_row(account, FetchedMessage(message_id=m.message_id(account.address), subject=m.subject,
                                              sender=m.sender, received_at=now - m.age))
        for m in SEED_MESSAGES if m.with_message_id
    ]
    with transaction.atomic():
        SyncedMessage.objects.bulk_create(rows, ignore_conflicts=True)
        newest = max(row.received_at for row in rows)
        FolderState.objects.update_or_create(account=account, name=v2.V2_FOLDER,
                                             defaults={"v2_high_water": newest, "v2_last_poll_at": now})
    return len(rows)
