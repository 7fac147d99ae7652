"""manage.py demo_mailserver [--port P] [--tls-port P] | --deliver N [--host H] [--tls-port P] [--ca-file F]

Without --deliver: runs the demo Dovecot in the foreground until Ctrl-C or
SIGTERM. Its mail, users and certificate live in DATA_DIR/demo-mail and
survive restarts; on first start every demo mailbox gets some mail.
With --deliver N: appends N new messages to every demo mailbox of the running
server and exits, so a newcomer can watch new mail arrive after migrating.
"""

import signal
import ssl
from datetime import datetime, timedelta, timezone as dt_timezone
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from migration.demo import DEMO_HOST, DEMO_MAILBOXES, DEMO_PORT, DEMO_TLS_PORT, new_message, seed_messages, server_answers
from portal.devservers import Dovecot


class Command(BaseCommand):
    help = (
        "Run the demo IMAP server (Dovecot) in the foreground until Ctrl-C, or with --deliver N append N new "
        "messages to every demo mailbox of the running server."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=DEMO_PORT, help=f"STARTTLS port (default {DEMO_PORT})")
        parser.add_argument("--tls-port", type=int, default=DEMO_TLS_PORT,
                            help=f"implicit-TLS port (default {DEMO_TLS_PORT})")
        parser.add_argument("--deliver", type=int, metavar="N", help="deliver N new messages to each mailbox and exit")
        parser.add_argument("--host", default=DEMO_HOST, help="with --deliver: where the server runs")
        parser.add_argument("--ca-file", default="",
                            help="with --deliver: the server's certificate (default: MAIL_TLS_CA_FILE, "
                                 "else DATA_DIR/demo-mail/cert.pem)")

    def handle(self, *args, port, tls_port, deliver, host, ca_file, **options):
        if deliver is not None:
            if deliver < 1:
                raise CommandError("--deliver needs a number of messages of at least 1")
            self._deliver(deliver, host=host, tls_port=tls_port, ca_file=ca_file or _default_ca_file())
        else:
            self._serve(port=port, tls_port=tls_port)

    def _serve(self, *, port: int, tls_port: int) -> None:
        for taken in (port, tls_port):
            if server_answers("127.0.0.1", taken):
                raise CommandError(f"127.0.0.1:{taken} is in use: is the demo mail server running already?")
        base = _data_dir()
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)  # Dovecot's unprivileged mail processes must traverse it
        if _certificate_expires_soon(base / "cert.pem"):
            # make_certificate issues 30-day certificates; a kept one runs out.
            (base / "cert.pem").unlink()
            self.stdout.write("the demo certificate expired: issuing a new one")
        server = Dovecot(DEMO_MAILBOXES, base=base, port=port, tls_port=tls_port, keep_files=True)
        # SIGTERM (the run script's cleanup) must stop Dovecot too: it runs in its
        # own session and would not get the signal itself.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            try:
                server.start()
            except (RuntimeError, OSError, ValueError) as error:
                raise CommandError(f"Dovecot did not start: {error} (log: {base / 'dovecot.log'})") from None
            self._report_ready(server, seeded=_seed_empty_mailboxes(server))
            code = server.process.wait()  # until Ctrl-C / SIGTERM interrupts, or Dovecot dies
            raise CommandError(f"Dovecot exited with code {code} (log: {base / 'dovecot.log'})")
        except KeyboardInterrupt:
            self.stdout.write("stopping the demo mail server")
        finally:
            server.stop()
            signal.signal(signal.SIGTERM, previous)

    def _report_ready(self, server: Dovecot, *, seeded: list[str]) -> None:
        for address in seeded:
            self.stdout.write(f"{address}: seeded with demo mail")
        self.stdout.write(f"demo mail server ready: IMAP 127.0.0.1:{server.tls_port} (SSL), "
                          f"127.0.0.1:{server.port} (STARTTLS)")
        for address, password in DEMO_MAILBOXES.items():
            self.stdout.write(f"  {address} / {password}")
        self.stdout.write(f"certificate: {server.cert_path}")
        if settings.MAIL_TLS_CA_FILE != str(server.cert_path):
            self.stdout.write(self.style.WARNING(
                f"the portal does not trust it yet: set MAIL_TLS_CA_FILE={server.cert_path} "
                "(and EGRESS_ALLOW_NETWORKS=127.0.0.1/32) for the web server and the worker"
            ))
        self.stdout.write("Ctrl-C stops it")
        self.stdout.flush()  # the run script sends this to a log file: show it now, not at exit

    def _deliver(self, count: int, *, host: str, tls_port: int, ca_file: str) -> None:
        now = timezone.now()
        try:
            context = ssl.create_default_context(cafile=ca_file or None)
        except (OSError, ssl.SSLError):
            raise CommandError(f"cannot read the certificate {ca_file}: is the demo mail server set up?") from None
        for address, password in DEMO_MAILBOXES.items():
            try:
                client = IMAPClient(host, port=tls_port, ssl=True, ssl_context=context, timeout=10)
            except ssl.SSLError:
                raise CommandError(f"{host}:{tls_port} is not using the certificate {ca_file}") from None
            except OSError:
                raise CommandError(f"the demo mail server is not running on {host}:{tls_port} "
                                   "(start: manage.py demo_mailserver)") from None
            try:
                client.login(address, password)
                for number in range(1, count + 1):
                    client.append("INBOX", new_message(address, number, now), msg_time=now)
            except IMAPClientError as error:
                raise CommandError(f"{address}: {error}") from None
            finally:
                _logout(client)
            self.stdout.write(f"{address}: delivered {count} new message(s)")


def _data_dir() -> Path:
    return Path(settings.DATA_DIR) / "demo-mail"


def _default_ca_file() -> str:
    return settings.MAIL_TLS_CA_FILE or str(_data_dir() / "cert.pem")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _certificate_expires_soon(path: Path) -> bool:
    from cryptography import x509

    if not path.exists():
        return False
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return True  # unreadable: make a new one
    return certificate.not_valid_after_utc < datetime.now(dt_timezone.utc) + timedelta(days=1)


def _seed_empty_mailboxes(server: Dovecot) -> list[str]:
    """Mail for every demo mailbox whose INBOX is empty: on first start, not after a restart."""
    seeded = []
    now = timezone.now()
    for address in DEMO_MAILBOXES:
        client = server.client(address)
        try:
            if client.select_folder("INBOX", readonly=True)[b"EXISTS"]:
                continue
            for raw, received_at in seed_messages(address, now):
                client.append("INBOX", raw, msg_time=received_at)  # INTERNALDATE in the past, like real mail
            seeded.append(address)
        finally:
            _logout(client)
    return seeded


def _logout(client) -> None:
    try:
        client.logout()
    except (IMAPClientError, OSError):
        pass  # the connection is gone anyway
