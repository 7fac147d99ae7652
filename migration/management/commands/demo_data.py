"""manage.py demo_data [--keep-campaign] [--host H] [--tls-port P]

Idempotent: run it again at any time. It never moves an account that a user
has already migrated back to V2.
"""

from django.conf import settings
from django.core.management.base import BaseCommand

from migration.demo import (DEMO_HOST, DEMO_M365_ACCOUNT, DEMO_MAILBOXES, DEMO_STAFF, DEMO_TLS_PORT, DEMO_USER,
                            set_up_demo)


class Command(BaseCommand):
    help = (
        "Create the demo logins, a campaign with dates relative to today, two V2 IMAP accounts on the "
        "demo mail server (manage.py demo_mailserver) and a V2 Microsoft 365 account for the demo tenant of "
        "./scripts/run. With the server running the IMAP accounts get real V2 history from one V2 poll; "
        "without it, and for the Microsoft account, stand-in history."
    )

    def add_arguments(self, parser):
        parser.add_argument("--keep-campaign", action="store_true",
                            help="leave an existing active campaign's dates alone")
        parser.add_argument("--host", default=DEMO_HOST, help=f"demo IMAP server (default {DEMO_HOST})")
        parser.add_argument("--tls-port", type=int, default=DEMO_TLS_PORT,
                            help=f"its implicit-TLS port (default {DEMO_TLS_PORT})")

    def handle(self, *args, keep_campaign, host, tls_port, **options):
        report = set_up_demo(host=host, tls_port=tls_port, keep_campaign=keep_campaign)
        campaign = report.campaign
        self.stdout.write(f"campaign: migrate by {campaign.migrate_by:%d.%m.%Y}, "
                          f"V2 shutdown {campaign.v2_shutdown:%d.%m.%Y}")
        if not report.server_running:
            self.stdout.write(self.style.WARNING(
                f"the demo mail server is not running on {host}:{tls_port} (start: manage.py demo_mailserver)"
            ))
        for line in report.lines:
            self.stdout.write(line)
        # Demo passwords only: printing them is the point of this command.
        self.stdout.write(f"\nportal: {settings.SITE_URL}/")
        self.stdout.write(f"demo user:       {DEMO_USER[0]} / {DEMO_USER[1]}")
        self.stdout.write(f"support (admin): {DEMO_STAFF[0]} / {DEMO_STAFF[1]}  ({settings.SITE_URL}/admin/)")
        for address, password in DEMO_MAILBOXES.items():
            self.stdout.write(f"mailbox:         {address} / {password}  (IMAP {host}:{tls_port}, SSL)")
        self.stdout.write(f"mailbox:         {DEMO_M365_ACCOUNT}  (Microsoft 365: sign in at the demo tenant "
                          "of ./scripts/run, no password)")
