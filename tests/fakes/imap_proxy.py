"""An IMAP server that answers in ways Dovecot never does: a TLS proxy in front of the real Dovecot
that rewrites the lines the server sends.

The client talks implicit TLS to the proxy (Dovecot's own certificate, so the
tests' MAIL_TLS_CA_FILE trusts it), the proxy talks implicit TLS to Dovecot. One
thread per connection moves bytes both ways (an SSL object is never used by two
threads at once). Every server line passes through `rewrite(line) -> line`;
`logins` counts the LOGIN and AUTHENTICATE commands clients sent.

It also counts what a poll costs: `round_trips` is how often a client spoke
again after the server had answered (a client that waits for every answer
adds one per command, one that pipelines adds one per burst; the TLS
handshakes are not counted), `commands` the command lines clients sent. With
`delay` (seconds) every chunk is held that long in each direction, as a
server 2 x delay away would be (the benchmark's 20 ms line).
"""

import re
import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable

LOGIN_COMMAND = re.compile(rb"^\S+ (LOGIN|AUTHENTICATE) ", re.IGNORECASE)
TAGGED_COMMAND = re.compile(rb"^[A-Za-z0-9.]+ (?:UID )?([A-Za-z]+)", re.IGNORECASE)


def keep(line: bytes) -> bytes:
    return line


def without_capability(name: bytes) -> Callable[[bytes], bytes]:
    """A rewrite that removes one capability (b"LIST-STATUS") from every line that announces capabilities."""
    pattern = re.compile(rb" " + re.escape(name) + rb"(?= |\]|$)", re.IGNORECASE)

    def rewrite(line: bytes) -> bytes:
        return pattern.sub(b"", line) if b"CAPABILITY" in line.upper() else line

    return rewrite


def drop_uidvalidity(line: bytes) -> bytes:
    """A STATUS answer without the UIDVALIDITY item that was asked for (RFC 3501 6.3.10 says it is returned)."""
    if line.upper().startswith(b"* STATUS "):
        return re.sub(rb"UIDVALIDITY \d+ ?", b"", line, flags=re.IGNORECASE).replace(b" )", b")")
    return line


class RewritingImapProxy:
    def __init__(self, dovecot, rewrite: Callable[[bytes], bytes] = keep, *, delay: float = 0.0):
        self.dovecot, self.rewrite, self.delay = dovecot, rewrite, delay
        self.round_trips = self.commands = 0
        self.verbs = Counter()  # command names clients sent (b"STATUS", b"SELECT", ...)
        self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_context.load_cert_chain(str(dovecot.cert_path), str(dovecot.base / "key.pem"))
        self.upstream_context = ssl.create_default_context(cafile=str(dovecot.cert_path))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.logins = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        client = upstream = None
        try:
            raw.settimeout(10)
            client = self.server_context.wrap_socket(raw, server_side=True)
            upstream = self.upstream_context.wrap_socket(
                socket.create_connection(("127.0.0.1", self.dovecot.tls_port), timeout=10), server_hostname="localhost"
            )
            self._pump(client, upstream)
        except (OSError, ssl.SSLError):
            pass
        finally:
            for sock in (client, upstream, raw):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass

    def _pump(self, client, upstream) -> None:
        from_client, from_server = b"", b""
        client_spoke_last = False
        while not self.stopped.is_set():
            # Decrypted bytes an SSL socket already holds do not show in select().
            ready = [s for s in (client, upstream) if s.pending()]
            if not ready:
                ready, _, _ = select.select([client, upstream], [], [], 0.2)
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                if self.delay:
                    time.sleep(self.delay)
                if sock is client:
                    from_client += data
                    *lines, from_client = from_client.split(b"\r\n")
                    with self.lock:
                        if not client_spoke_last:
                            self.round_trips += 1
                        for line in lines:
                            self.logins += bool(LOGIN_COMMAND.match(line))
                            command = TAGGED_COMMAND.match(line)
                            if command:
                                self.commands += 1
                                self.verbs[command.group(1).upper()] += 1
                    client_spoke_last = True
                    upstream.sendall(data)
                else:
                    client_spoke_last = False
                    from_server += data
                    *lines, from_server = from_server.split(b"\r\n")
                    if lines:
                        client.sendall(b"".join(self.rewrite(line) + b"\r\n" for line in lines))

    def reset_counts(self) -> None:
        with self.lock:
            self.round_trips = self.commands = self.logins = 0
            self.verbs.clear()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
