"""Byte and time caps for HTTP answers from hosts that users or providers control.

Used by the egress guard's HTTP path (autoconfig, ISPDB, Autodiscover), by
Microsoft Graph and by MSAL's HTTP client (sync.microsoft.client).

Bytes: read_body() reads a response that was requested with stream=True in
pieces and gives up past max_bytes, counted after decoding. A gzip or
deflate "bomb" (a few hundred KB that inflate to gigabytes) is stopped at the
cap and never inflated whole: urllib3's streaming read inflates at most about
what was asked for since 2.6 (CVE-2025-66471, GHSA-2xpw-w6gg-jr37), which is
why pyproject asks for urllib3 >= 2.6. requests' own .content/.json() of a
non-streamed response would inflate everything first.

Time: requests' timeout bounds each wait for bytes, not the whole answer; a
server that sends one byte every few seconds would hold a worker for hours.
Inside `with deadline(seconds):` every connection the adapters below use is
shut down when the time is up (connect, TLS, headers, body, redirects: all of
it), and the block raises TooSlow instead of whatever the broken connection
raised.
"""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

CHUNK_BYTES = 16384


class TooLarge(Exception):
    """The answer had more than max_bytes (decoded); it was not read further and its connection is closed."""


class TooSlow(Exception):
    """The whole request took longer than its deadline; its connection was shut down."""


_current = threading.local()


def shut_down(connection) -> None:
    """Shut the connection's socket down: a read blocked on it returns at once (from any thread)."""
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already


class Deadline:
    """The connections of one request and whether its time is up (set from a timer thread)."""

    def __init__(self):
        self.expired = False
        self._connections = []
        self._lock = threading.Lock()

    def watch(self, connection) -> None:
        with self._lock:
            if not self.expired:
                self._connections.append(connection)
                return
        shut_down(connection)  # connected after the time was up: it must not carry on

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            connections, self._connections = self._connections, []
        for connection in connections:
            shut_down(connection)


@contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Shut every watched connection opened or used in the block down after `seconds`; then raise TooSlow.

    An exception raised in the block after the time was up (the connection
    reset, a read that ended early) becomes TooSlow; a TooLarge stays what it is.
    """
    state = Deadline()
    timer = threading.Timer(seconds, state.expire)
    timer.daemon = True
    previous = getattr(_current, "deadline", None)
    _current.deadline = state
    timer.start()
    try:
        yield state
    except TooLarge:
        raise
    except Exception:
        if state.expired:
            raise TooSlow(f"no complete answer within {seconds} s") from None
        raise
    finally:
        timer.cancel()
        _current.deadline = previous


@contextmanager
def watched_by(watcher) -> Iterator[None]:
    """Within the block, every connection this thread uses is handed to watcher.watch(connection).

    watcher: anything with watch(connection), e.g. a Deadline or a deadline
    that must outlive the block (sync.egress.PinnedAdapter's, whose body is
    read after send() returns).
    """
    previous = getattr(_current, "deadline", None)
    _current.deadline = watcher
    try:
        yield
    finally:
        _current.deadline = previous


def watch(connection) -> None:
    """Put `connection` under the current thread's deadline, if there is one."""
    state = getattr(_current, "deadline", None)
    if state is not None:
        state.watch(connection)


def _on_connect(connection) -> None:
    # A sync run that passes SYNC_RUN_MAX_SECONDS shuts its connections down (sync.leases).
    from sync import leases  # not at import: the guard is also used before Django's apps are ready

    leases.on_overrun(lambda: shut_down(connection))
    watch(connection)  # again after connecting: the deadline may have passed while it connected


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self):
        super().connect()
        _on_connect(self)

    def request(self, *args, **kwargs):
        watch(self)  # a kept-alive connection is reused without connect()
        return super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self):
        super().connect()
        _on_connect(self)

    def request(self, *args, **kwargs):
        watch(self)
        return super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """A requests adapter whose connections a deadline (and an overrunning sync run) can shut down."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def read_body(response, *, max_bytes: int) -> bytes:
    """Read a stream=True response whole, at most max_bytes after decoding; raise TooLarge past that.

    The body is kept on the response (requests' documented `_content`), so
    .text and .json() work afterwards without another read.
    """
    body = bytearray()
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            body += chunk
            if len(body) > max_bytes:
                raise TooLarge(f"more than {max_bytes} bytes")
    except TooLarge:
        response.close()
        raise
    response._content = bytes(body)
    return response._content
