"""Test a mailbox connection through the migration's own code path and egress guard.

    manage.py probe_mailbox --provider imap --host imap.example.com --username anna@example.com
    printf '%s\\n' "$PW" | manage.py probe_mailbox --provider ews --host mail.example.com \\
        --username 'CORP\\anna' --address anna@example.com

The password comes from a prompt, or from the first line of stdin when stdin
is not a terminal; never from the command line (shell history, `ps`).

For EWS, --auth auto (the default) lets the server's anonymous 401 choose the
sign-in method, NTLM before Basic, exactly as the migration does
(migration.exchange.flow.verify); ntlm or basic force one. The method used is
printed after "connected".

Exit codes: 0 connected, 1 the connection failed or the host name does not
resolve ("cannot resolve HOST"), 2 the egress policy refused the destination,
3 too many attempts (rate limit).
"""

import getpass
import json
import sys

from django.core.management.base import BaseCommand, CommandError

from migration.exchange import flow as exchange_flow
from migration.imap import flow as imap_flow
from sync.certificates import NotCertificates, certificates_only
from sync.exchange import client as ews
from sync.egress import EgressRefused, RateLimited, check_rate, resolve_checked, split_url
from sync.imap.client import ImapSettings, MailboxError

# Operators read English; the file is never stored, but a key in it is a mistake worth saying.
_CA_FILE_REFUSED = {
    "private_key": "holds a private key; give the CA certificate only (-----BEGIN CERTIFICATE-----)",
    "no_certificate": "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
    "too_long": "is too long for a CA bundle (64 KB at most)",
}


class Command(BaseCommand):
    help = ("Connect to a mailbox (IMAP or Exchange EWS) the way the migration does, through the egress guard, "
            "and print the folder cursors. The password is read from a prompt or stdin, never from arguments.")
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("--provider", choices=["imap", "ews"], required=True)
        parser.add_argument("--host", required=True, help="IMAP host; for EWS the Exchange host or the EWS URL")
        parser.add_argument("--port", type=int, help="default 993 (IMAP ssl), 143 (IMAP starttls), 443 (EWS)")
        parser.add_argument("--security", choices=["ssl", "starttls"], default="ssl", help="IMAP only")
        parser.add_argument("--username", required=True, help="IMAP user name; EWS: DOMAIN\\user or UPN")
        parser.add_argument("--address", help="EWS: the mailbox's e-mail address (default: --username)")
        parser.add_argument("--auth", choices=[exchange_flow.AUTO, "ntlm", "basic"], default=exchange_flow.AUTO,
                            help="EWS only; auto asks the server, like the migration")
        parser.add_argument("--ca-file", help="EWS: the Exchange server's own CA certificate (PEM file)")

    def handle(self, *args, **options):
        password = _read_password(options.get("stdin") or sys.stdin)
        try:
            probe, host, port = self._prepare(options)
            # The guard refuses unknown names too; asked first, so support is not sent to the allow-list.
            # The same guard the connection applies; checked here too, to say why.
            resolve_checked(host, port)
            check_rate(None, host, port)
            cursors, auth_type = probe(password)
        except EgressRefused as error:
            if error.reason != "forbidden":
                raise CommandError(f"cannot resolve {error.host}", returncode=1) from None
            raise CommandError(f"the egress policy refused {error.host} (not a public address, and not in "
                               "EGRESS_ALLOW_NETWORKS)", returncode=2) from None
        except RateLimited:
            raise CommandError("too many connection attempts to this destination, try again later",
                               returncode=3) from None
        except MailboxError as error:
            raise CommandError(f"connection failed: {error.code}", returncode=1) from None
        self.stdout.write(f"connected: {len(cursors)} folders" + (f" (auth {auth_type})" if auth_type else ""))
        self.stdout.write(json.dumps(cursors, indent=2, sort_keys=True))

    def _prepare(self, options):
        if options["provider"] == "imap":
            port = options["port"] or (993 if options["security"] == "ssl" else 143)
            server = ImapSettings(options["host"], port, options["security"], options["username"])
            return (lambda password: (imap_flow.verify(server, password), "")), server.host, port
        host = options["host"]
        if options["port"] and "://" not in host and ":" not in host:
            host = f"{host}:{options['port']}"
        try:
            url = ews.ews_url_for(host)
        except ValueError:
            raise CommandError("EWS needs an https URL or a host name") from None
        address = options["address"] or options["username"]
        if "@" not in address:
            raise CommandError("--address is needed: the mailbox's e-mail address (the login is DOMAIN\\user)")
        ca_pem = ""
        if options["ca_file"]:
            with open(options["ca_file"], encoding="ascii", errors="replace") as handle:
                try:
                    ca_pem = certificates_only(handle.read())
                except NotCertificates as refused:
                    raise CommandError(f"--ca-file {options['ca_file']}: {_CA_FILE_REFUSED[refused.reason]}") from None
        connection = {"ews_url": url, "username": options["username"], "auth_type": options["auth"],
                      "ca_pem": ca_pem}
        _scheme, host, port = split_url(url)
        return (lambda password: _verify_ews(connection, address, password)), host, port


def _verify_ews(connection: dict, address: str, password: str) -> tuple[dict, str]:
    settled, cursors = exchange_flow.verify(connection, address, password)
    return cursors, settled["auth_type"]


def _read_password(stdin) -> str:
    if stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        # Only the line ending is removed: spaces may be part of a password.
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("no password given (prompt, or the first line of stdin)")
    return password
