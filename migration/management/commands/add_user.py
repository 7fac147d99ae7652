"""Create or update a portal login: manage.py add_user EMAIL [--staff] [--superuser].

The password never comes from the command line (shell history, `ps`): it is
read from a prompt, or from the first line of stdin when stdin is not a
terminal (`printf '%s\\n' "$PW" | manage.py add_user anna@example.com`).
"""

import getpass
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email

from migration.logins import save_login


class Command(BaseCommand):
    help = (
        "Create or update a login whose username is the e-mail address. The password is read from an "
        "interactive prompt, or from the first line of stdin when stdin is not a terminal; it is never "
        "accepted as an argument. Existing staff/superuser rights are kept (remove them in the admin)."
    )
    # call_command(..., stdin=io.StringIO(...)) like createsuperuser; not a command-line option.
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("email", help="e-mail address; also the username")
        parser.add_argument("--staff", action="store_true", help="may sign in to the admin (support staff)")
        parser.add_argument("--superuser", action="store_true", help="all permissions (implies --staff)")

    def handle(self, *args, email, staff, superuser, **options):
        email = email.strip()
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"{email!r} is not an e-mail address") from None
        password = _read_password(options.get("stdin") or sys.stdin)
        try:
            user, created = save_login(email=email, password=password, staff=staff, superuser=superuser)
        except ValidationError as error:
            raise CommandError("password rejected: " + " ".join(error.messages)) from None
        role = "superuser" if user.is_superuser else "staff" if user.is_staff else "user"
        self.stdout.write(f"{'created' if created else 'updated'} {role} {user.username}")


def _read_password(stdin) -> str:
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Password (again): "):
            raise CommandError("the passwords do not match")
    else:
        # Only the line ending is removed: spaces may be part of a password.
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("no password given (prompt, or the first line of stdin)")
    return password
