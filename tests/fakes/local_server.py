"""The threaded HTTP(S) server every fake runs on: 127.0.0.1 only, a free port, daemon threads."""

import ssl
import threading
from http.server import ThreadingHTTPServer


def listen(handler, context: ssl.SSLContext | None = None, *, port: int = 0, **wrap) -> ThreadingHTTPServer:
    """port 0: a free one (tests); the demo doubles ask for their fixed port."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True, **wrap)
    return server


def serve_in_background(server: ThreadingHTTPServer) -> None:
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


def shut(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
