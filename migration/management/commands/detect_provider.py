"""Which provider runs an address: manage.py detect_provider anna@example.com [--json].

The same detection the migration uses (built-in table, MX lookup, optional
HTTP lookups, the cache), for support staff and operators.
"""

import json

from django.core.management.base import BaseCommand, CommandError

from migration.detection import detect


class Command(BaseCommand):
    help = "Detect the mail provider of an e-mail address and print the proposed server settings and hints."

    def add_arguments(self, parser):
        parser.add_argument("address", help="e-mail address")
        parser.add_argument("--json", action="store_true", help="print the whole result as JSON")

    def handle(self, *args, address, json: bool, **options):
        detection = detect(address)
        if not detection.valid:
            # Exit code 2 like a usage error: a script must not read "unknown provider" as an answer.
            raise CommandError(f"{address!r} is not an e-mail address (expected name@domain.tld)", returncode=2)
        result = detection.as_dict()
        if json:
            self.stdout.write(_dumps(result))
            return
        self.stdout.write(f"provider:   {result['provider']} ({result['label'] or '-'}), source {result['source']}")
        self.stdout.write(f"candidates: {', '.join(result['candidates']) or '-'}")
        server = result["server"]
        if server:
            where = server.get("url") or f"{server['host']}:{server['port']} ({server['security']})"
            self.stdout.write(f"server:     {server['protocol']} {where}")
            if server.get("username"):
                self.stdout.write(f"username:   {server['username']}")
        if result["needs_confirmation"]:
            self.stdout.write(f"confirm:    the server {result['confirm_host']} is outside the user's domain")
        for hint in result["hints"]:
            self.stdout.write(f"hint:       {hint}")
        if result["help_url"]:
            self.stdout.write(f"help:       {result['help_url']}")


def _dumps(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)
