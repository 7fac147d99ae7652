"""A tiny scripted IMAP server over TLS on 127.0.0.1, for answers no real server (Dovecot) would send.

    server = FakeIMAP([raw1, raw2, raw3], hostile={"literal_in": "fetch", "uid": 2}).start()
    ... ImapSettings("127.0.0.1", server.port, "ssl", "anna") with MAIL_TLS_CA_FILE = server.cert_path

One read-only INBOX holding `messages` (UIDs 1..n), any login accepted. It
speaks just what the sync uses (RFC 3501): CAPABILITY, LOGIN, LIST, STATUS,
EXAMINE/SELECT, UID SEARCH, UID FETCH of the header fields, NOOP, LOGOUT.
hostile (None: an honest server):
- {"literal_in": "fetch", "uid": u}: a FETCH that includes UID u announces
  a literal of `size` octets for u's header fields (default 2,000,000,000),
  sends a few KB of it and hangs up;
- {"literal_in": "list"}: the LIST answer does that with the folder name;
- {"drip_in": "fetch"}: FETCH answers trickle one byte every
  bombs.DRIP_INTERVAL seconds;
- {"login_delay": s}: LOGIN is answered after s seconds, as servers answer
  logins after failed ones (Dovecot's auth penalty).
`connections` counts the TLS connections, `commands` every command line.
"""

import re
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path

from portal.devservers import make_certificate
from tests.fakes import bombs

UIDVALIDITY = 777
FIELDS = b"BODY[HEADER.FIELDS (MESSAGE-ID SUBJECT FROM TO CC DATE CONTENT-TYPE)]"


def _header(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw[: end + 4] if end >= 0 else raw


def _uids(spec: str, last: int) -> list[int]:
    found = []
    for part in spec.split(","):
        low, _, high = part.partition(":")
        start = last if low == "*" else int(low)
        stop = start if not high else (last if high == "*" else int(high))
        found.extend(range(min(start, stop), max(start, stop) + 1))
    return [uid for uid in dict.fromkeys(found) if 1 <= uid <= last]


class FakeIMAP:
    def __init__(self, messages: list[bytes], *, hostile: dict | None = None):
        self.messages = [raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for raw in messages]
        self.hostile = hostile or {}
        self.connections = 0
        self.commands: list[str] = []
        self.cert_path, key_path = make_certificate(Path(tempfile.mkdtemp(prefix="fake-imap-")))
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(self.cert_path, key_path)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()

    def start(self) -> "FakeIMAP":
        self._listener.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _peer = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        try:
            conn = self._context.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError):
            sock.close()
            return
        self.connections += 1
        reader = conn.makefile("rb")
        try:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake IMAP ready\r\n")
            while not self._stopped.is_set():
                line = reader.readline()
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                self.commands.append(text)
                tag, _, rest = text.partition(" ")
                if not self._answer(conn, tag, rest):
                    return
        except OSError:
            pass  # the client hung up (what a cap does)
        finally:
            conn.close()

    def _answer(self, conn, tag: str, rest: str) -> bool:
        """Answer one command; False ends the connection."""
        verb = rest.split(" ", 1)[0].upper()
        last = len(self.messages)
        if verb == "CAPABILITY":
            conn.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag.encode() + b" OK done\r\n")
        elif verb == "LOGIN":
            time.sleep(self.hostile.get("login_delay", 0))
            conn.sendall(tag.encode() + b" OK [CAPABILITY IMAP4rev1] logged in\r\n")
        elif verb == "LIST":
            if self.hostile.get("literal_in") == "list":
                return self._huge_literal(conn, b'* LIST (\\HasNoChildren) "/" ')
            conn.sendall(b'* LIST (\\HasNoChildren) "/" INBOX\r\n' + tag.encode() + b" OK done\r\n")
        elif verb == "STATUS":
            conn.sendall(f"* STATUS INBOX (UIDVALIDITY {UIDVALIDITY} UIDNEXT {last + 1})\r\n{tag} OK done\r\n".encode())
        elif verb in ("EXAMINE", "SELECT"):
            conn.sendall(f"* FLAGS (\\Seen)\r\n* {last} EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY {UIDVALIDITY}] ok\r\n"
                         f"* OK [UIDNEXT {last + 1}] ok\r\n{tag} OK [READ-ONLY] done\r\n".encode())
        elif verb == "UID" and rest.upper().startswith("UID SEARCH"):
            spec = rest.split()[-1]
            found = " ".join(str(uid) for uid in _uids(spec, last))
            conn.sendall(f"* SEARCH {found}\r\n{tag} OK done\r\n".encode())
        elif verb == "UID" and rest.upper().startswith("UID FETCH"):
            return self._fetch(conn, tag, _uids(rest.split()[2], last))
        elif verb == "NOOP":
            conn.sendall(tag.encode() + b" OK done\r\n")
        elif verb == "LOGOUT":
            conn.sendall(b"* BYE bye\r\n" + tag.encode() + b" OK done\r\n")
            return False
        else:
            conn.sendall(tag.encode() + b" BAD unknown command\r\n")
        return True

    def _fetch(self, conn, tag: str, uids: list[int]) -> bool:
        answer = b""
        for uid in uids:
            if self.hostile.get("literal_in") == "fetch" and uid == self.hostile.get("uid"):
                conn.sendall(answer)
                return self._huge_literal(conn, f"* {uid} FETCH (UID {uid} RFC822.SIZE 100 ".encode() + FIELDS + b" ")
            header = _header(self.messages[uid - 1])
            answer += (f'* {uid} FETCH (UID {uid} INTERNALDATE "01-Jun-2025 10:00:00 +0000" RFC822.SIZE '
                       f"{len(self.messages[uid - 1])} ").encode() + FIELDS + f" {{{len(header)}}}\r\n".encode()
            answer += header + b")\r\n"
        answer += tag.encode() + b" OK done\r\n"
        if self.hostile.get("drip_in") == "fetch":
            bombs.drip(conn.sendall, answer)
            return False
        conn.sendall(answer)
        return True

    def _huge_literal(self, conn, before: bytes) -> bool:
        size = int(self.hostile.get("size", 2_000_000_000))
        conn.sendall(before + f"{{{size}}}\r\n".encode() + b"x" * 4096)
        return False  # and hang up: no real server sends this
