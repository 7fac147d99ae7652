"""manage.py import_v2_accounts FILE [--create-users] [--dry-run]"""

import json
import sys
from argparse import RawDescriptionHelpFormatter

from django.core.management.base import BaseCommand, CommandError, DjangoHelpFormatter

from migration.v2_import import ImportInvalid, import_accounts, parse_accounts

FORMAT = """
The file is JSON (no CSV), UTF-8, "-" reads stdin. Full description: docs/import-format.md.

{"accounts": [{
   "owner": "user@example.com",              portal user (username or e-mail)
   "address": "anna@gmx.de",                 the mailbox
   "provider_kind": "imap",                  imap | microsoft | exchange
   "provider_name": "gmx",                   gmx | webde | ionos | tonline | strato | other
   "imap": {"host": "imap.gmx.net", "port": 993, "security": "ssl", "username": "anna@gmx.de"},
   "password": "...",                        stored encrypted, never printed
   "folders": [{"name": "INBOX", "v2_high_water": "2025-06-30T14:05:00+02:00",
                "v2_last_poll_at": "2025-06-30T14:10:00+02:00"}],
   "imported": [{"message_id": "<id@host>", "folder": "INBOX", "subject": "...", "from": "...",
                 "to": "...", "date": "<Date header>", "received_at": "2025-06-30T14:05:00+02:00",
                 "uid": 12, "size": 1234}]
}]}

The whole file is checked first: if anything is wrong, every problem is listed
(e.g. "accounts[3].address: not an e-mail address") and nothing is written.
Otherwise everything is imported in one transaction, on engine V2. Re-importing the same
file changes nothing. Accounts already on V3 are skipped, never downgraded.
"""


class _RawHelp(DjangoHelpFormatter, RawDescriptionHelpFormatter):
    """Keeps the line breaks of the format example in --help."""


class Command(BaseCommand):
    help = "Import legacy V2 mail accounts with their sync state from a JSON file.\n" + FORMAT

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = _RawHelp
        return parser

    def add_arguments(self, parser):
        parser.add_argument("file", help='JSON file, or "-" for stdin')
        parser.add_argument("--create-users", action="store_true",
                            help="create missing owners (with an unusable password) instead of failing")
        parser.add_argument("--dry-run", action="store_true", help="check and count everything, save nothing")

    def handle(self, *args, file, create_users, dry_run, **options):
        data = _load(file)
        try:
            summary = import_accounts(parse_accounts(data), create_users=create_users, dry_run=dry_run)
        except ImportInvalid as invalid:
            for error in invalid.errors:
                self.stderr.write(error)
            raise CommandError(f"{len(invalid.errors)} problem(s) in {file}; nothing was imported") from None
        for line in summary.skipped:
            self.stdout.write(line)
        self.stdout.write(
            f"{'dry run, nothing saved: ' if dry_run else ''}accounts {summary.created} created, "
            f"{summary.updated} updated, {summary.unchanged} unchanged, {len(summary.skipped)} skipped; "
            f"messages imported: {summary.messages}; users created: {summary.users_created}"
        )


def _load(file: str):
    try:
        if file == "-":
            return json.load(sys.stdin)
        with open(file, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as error:
        raise CommandError(f"{file}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{file}: not UTF-8") from None
    except json.JSONDecodeError as error:
        # error.msg and the position only: the document (with passwords) is never echoed.
        raise CommandError(f"{file}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None

