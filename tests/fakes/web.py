"""A small HTTP(S) server on 127.0.0.1 for tests of the egress guard and detection.

    web = FakeWeb({"/ok": (200, {}, "hallo"), "/hop": (302, {"Location": "http://10.0.0.1/"}, "")}).start()
    web.url("/ok") -> "http://127.0.0.1:PORT/ok"

A route may also be a callable(handler) -> (status, headers, body); a body
may be a callable(write) that writes it itself (after the headers, which then
must carry their own Content-Length). The hostile answers of the caps tests:
bomb_route() (a compression bomb) and drip_route() (one byte at a time). With
tls_names the server speaks HTTPS with a certificate for exactly those names
(cert_pem is its CA); the server name each client asked for (SNI) is kept in
`sni`, every request in `requests` as (method, path, headers, body).
"""

import ssl
import subprocess
import tempfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.fakes import bombs
from tests.fakes.local_server import listen, serve_in_background, shut


def bomb_route(encoding: str = "gzip", content_type: str = "text/xml") -> tuple:
    """200 with a body of ~200 KB that inflates to bombs.BOMB_BYTES (Content-Encoding gzip or deflate)."""
    return 200, {"Content-Type": content_type, "Content-Encoding": encoding}, bombs.bomb(encoding=encoding)


def drip_route() -> tuple:
    """200 announcing 10,000 bytes and sending one every bombs.DRIP_INTERVAL seconds."""
    return 200, {"Content-Type": "text/xml", "Content-Length": "10000"}, lambda write: bombs.drip(write)


def make_named_certificate(directory: Path, names: list[str]) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    san = ",".join(f"DNS:{name}" for name in names)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={names[0]}",
         "-addext", f"subjectAltName={san}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


class FakeWeb:
    def __init__(self, routes: dict | None = None, *, tls_names: list[str] | None = None):
        self.routes = dict(routes or {})
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.sni: list[str | None] = []
        self.scheme = "http"
        self.cert_pem = ""
        context = None
        if tls_names:
            cert, key = make_named_certificate(Path(tempfile.mkdtemp(prefix="fake-web-")), tls_names)
            self.cert_pem = cert.read_text()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            context.sni_callback = lambda sock, name, ctx: self.sni.append(name)
            self.scheme = "https"
        self._server = listen(_handler(self), context)
        self.port = self._server.server_address[1]

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def start(self) -> "FakeWeb":
        serve_in_background(self._server)
        return self

    def stop(self) -> None:
        shut(self._server)


def _handler(web: FakeWeb):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes

        def log_message(self, *args):
            pass

        def _serve(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?", 1)[0]
            web.requests.append((self.command, self.path, dict(self.headers), body))
            route = web.routes.get(path, (404, {}, "not found"))
            status, headers, payload = route(self) if callable(route) else route
            payload = payload.encode() if isinstance(payload, str) else payload
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if callable(payload):
                self.end_headers()
                self.wfile.flush()
                payload(self.wfile.write)
                self.close_connection = True
                return
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # a client that stopped reading (a cap)

        do_GET = do_POST = _serve

    return Handler
