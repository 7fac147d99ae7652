"""PinnedAdapter's caps on one response (sync.egress): bytes after decompression and seconds from the request to
the last byte, whichever phase the server stalls in; and a capped connection that answered in time stays usable."""

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from sync import egress
from tests.fakes.local_server import listen, serve_in_background, shut


class _Server:
    """Plain HTTP on 127.0.0.1; `mode` says how it answers GET /."""

    def __init__(self):
        self.mode, self.connections = "ok", set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.connections.add(self.client_address)
                try:
                    getattr(self, f"_{server.mode}")()
                except OSError:
                    pass  # the client shut the connection down

            def _ok(self):
                self._answer(b"<ok/>")

            def _big(self):
                self._answer(b"x" * 300_000)

            def _bomb(self):
                self._answer(gzip.compress(b" " * (64 * 2**20)), {"Content-Encoding": "gzip"})

            def _slow_headers(self):
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(600):  # a header line that never ends
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    time.sleep(0.05)

            def _slow_body(self):
                self.send_response(200)
                self.send_header("Content-Length", "600")
                self.end_headers()
                for _ in range(600):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)

            def _answer(self, body, headers=None):
                self.send_response(200)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = listen(Handler)
        self.url = f"http://localhost:{self.http.server_address[1]}/"
        serve_in_background(self.http)


@pytest.fixture
def server():
    running = _Server()
    yield running
    shut(running.http)


def _session(**caps):
    return egress.pinned_session("localhost", "127.0.0.1", max_retries=0, **caps)


@pytest.mark.parametrize("mode", ["big", "bomb"])
def test_it_stops_reading_at_the_byte_cap(server, mode):
    server.mode = mode
    with _session(max_bytes=100_000) as session, pytest.raises(egress.ResponseTooLarge) as error:
        session.get(server.url, timeout=5)
    assert error.value.code == "response_too_large"


@pytest.mark.parametrize("mode", ["slow_headers", "slow_body"])
def test_it_gives_up_at_the_time_cap_whichever_part_is_slow(server, mode):
    server.mode = mode
    with _session(max_seconds=1) as session, pytest.raises(egress.ResponseTooSlow) as error:
        session.get(server.url, timeout=5)  # each read is quick: the read timeout alone never ends this
    assert error.value.code == "response_too_slow"


def test_an_answer_in_time_leaves_the_connection_usable(server):
    threads = threading.active_count()
    with _session(max_bytes=1000, max_seconds=0.3) as session:
        assert session.get(server.url, timeout=5).content == b"<ok/>"
        time.sleep(0.5)  # past the first request's deadline: its timer must not shut the kept-alive connection
        assert session.get(server.url, timeout=5).content == b"<ok/>"
    assert len(server.connections) == 1  # one kept-alive connection for both requests
    assert threading.active_count() <= threads + 1  # the timers ended (the server's handler thread may linger)
