"""Throw-away local servers for tests and the demo: Dovecot, Redis, PostgreSQL.

Each binds to 127.0.0.1 on a free port, lives in its own temporary folder and
is stopped by its PID. Nothing here is used by the portal in production.
"""

import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _workdir(prefix: str) -> Path:
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700 and Dovecot's
    # unprivileged processes could not traverse it.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    key.chmod(0o644)  # Dovecot's config process reads it as the login user
    return cert, key


def make_message(*, subject: str, sender: str = "kunde@example.org", to: str = "postfach@example.org",
                 message_id: str | None = "", date: datetime | None = None, body: str = "Hallo!") -> bytes:
    """message_id: "" makes a fresh one, None leaves the header out."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(date or datetime.now(timezone.utc))
    if message_id is not None:
        message["Message-ID"] = message_id or make_msgid(domain="example.org")
    message.set_content(body)
    return message.as_bytes()


def _read_users(path: Path) -> dict[str, str]:
    """Parse a passwd-file written by Dovecot._write_users ("user:{PLAIN}password::::::")."""
    users = {}
    for line in path.read_text().splitlines():
        user, _, rest = line.partition(":{PLAIN}")
        if user and rest.endswith("::::::"):
            users[user] = rest[: -len("::::::")]
    return users


class Dovecot:
    """A real IMAP server with TLS (port: STARTTLS, tls_port: implicit TLS)."""

    def __init__(self, users: dict[str, str], *, base: Path | None = None, port: int | None = None,
                 tls_port: int | None = None, pool_size: int = 0, keep_files: bool = False, extra_config: str = ""):
        # keep_files: the demo server keeps its mail, users and certificate across restarts.
        self.keep_files = keep_files
        self.users = {}
        if keep_files and base is not None and (base / "users").exists():
            self.users.update(_read_users(base / "users"))  # users added earlier, unless given again
        self.users.update(users)
        # Ready-made mailboxes, so tests need not wait for Dovecot to re-read its users.
        self._pool = [f"pool{i:04d}-{secrets.token_hex(3)}@example.org" for i in range(pool_size)]
        self.users.update({address: secrets.token_urlsafe(9) for address in self._pool})
        self.base = base or _workdir("dovecot-")
        self.port = port or free_port()
        self.tls_port = tls_port or free_port()
        self.process = None
        # Appended to dovecot.conf, e.g. a namespace with RFC 6154 special_use flags.
        self.extra_config = extra_config

    @property
    def cert_path(self) -> Path:
        return self.base / "cert.pem"

    def start(self) -> "Dovecot":
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not Path(binary).exists():
            raise RuntimeError("dovecot is not installed (apt-get install dovecot-imapd)")
        for sub in ("run", "state", "mail"):
            (self.base / sub).mkdir(exist_ok=True)
        if not (self.cert_path.exists() and (self.base / "key.pem").exists()):
            make_certificate(self.base)
        self._write_users()
        me = pwd.getpwuid(os.geteuid())
        if os.geteuid() == 0:
            owner, group, extra = "nobody", "nogroup", ""
            shutil.chown(self.base / "mail", "nobody", "nogroup")
        else:
            owner, group = me.pw_name, me.pw_name
            extra = f"default_internal_user = {owner}\ndefault_login_user = {owner}\ndefault_internal_group = {group}\n"
        (self.base / "dovecot.conf").write_text(f"""
base_dir = {self.base}/run
state_dir = {self.base}/state
log_path = {self.base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.base}/cert.pem
ssl_key = <{self.base}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
mail_fsync = never
auth_failure_delay = 0
# Meant to spare loopback anvil's auth penalty (Dovecot's documentation). A review still saw Dovecot 2.3.19
# answer a login 15 s late after failed ones, as providers do: the portal waits MAIL_LOGIN_TIMEOUT for it.
login_trusted_networks = 127.0.0.0/8
{extra}
protocol imap {{
  mail_max_userip_connections = 100
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.base}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.base}/users
  default_fields = uid={owner} gid={group} home={self.base}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
{self.extra_config}
""")
        self.process = subprocess.Popen(
            [binary, "-F", "-c", str(self.base / "dovecot.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for_port(self.port)
        wait_for_port(self.tls_port)
        return self

    def _write_users(self) -> None:
        lines = [f"{user}:{{PLAIN}}{password}::::::" for user, password in self.users.items()]
        path = self.base / "users"
        # Dovecot looks at passwd-file at most once a second and compares
        # its mtime in whole seconds: a change must land in a new second, and
        # be used only from the next second on.
        if int(time.time()) <= getattr(self, "_written_at", -1):
            time.sleep(1.05 - time.time() % 1)
        path.write_text("\n".join(lines) + "\n")
        self._written_at = int(time.time())
        if self.process is not None:
            time.sleep(1.05 - time.time() % 1)

    def take_mailbox(self) -> tuple[str, str]:
        """A fresh, empty mailbox from the pool: (address, password)."""
        if not self._pool:
            raise RuntimeError("the mailbox pool is used up: raise pool_size")
        address = self._pool.pop(0)
        return address, self.users[address]

    def set_password(self, user: str, password: str) -> None:
        self.users[user] = password
        self._write_users()  # passwd-file is re-read when it changes

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        if not self.keep_files:
            shutil.rmtree(self.base, ignore_errors=True)

    def client(self, user: str):
        from imapclient import IMAPClient

        context = ssl.create_default_context(cafile=str(self.cert_path))
        client = IMAPClient("127.0.0.1", port=self.tls_port, ssl=True, ssl_context=context, timeout=10)
        client.login(user, self.users[user])
        return client

    def deliver(self, user: str, *messages: bytes, folder: str = "INBOX", when: datetime | None = None) -> None:
        """APPEND messages (one MULTIAPPEND-like loop), with an INTERNALDATE if given."""
        client = self.client(user)
        try:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for raw in messages:
                client.append(folder, raw, msg_time=when)
        finally:
            client.logout()


class Redis:
    """A real Redis; appendonly=True keeps its data across kill() and start() like production's."""

    def __init__(self, *, appendonly: bool = False):
        self.base = _workdir("redis-")
        self.port = free_port()
        self.appendonly = appendonly
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Redis":
        """Start (or start again after kill(): same port, same data folder)."""
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--daemonize", "no", "--dir", str(self.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no chance to say goodbye to clients."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return str(versions[0] / name)


class Postgres:
    """A throw-away cluster; as root it runs as the 'postgres' system user."""

    def __init__(self):
        self.base = _workdir("pg-")
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def settings(self) -> dict:
        return {"HOST": "127.0.0.1", "PORT": str(self.port), "USER": "postgres", "PASSWORD": "", "NAME": "postgres"}

    def start(self) -> "Postgres":
        if self.as_user:
            shutil.chown(self.base, "postgres")
        data = self.base / "data"
        subprocess.run(self.as_user + [_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                       "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        subprocess.run(self.as_user + [_pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-w", "-l",
                                       str(self.base / "pg.log"), "start"], check=True, capture_output=True)
        return self

    def stop(self) -> None:
        subprocess.run(self.as_user + [_pg_bin("pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
