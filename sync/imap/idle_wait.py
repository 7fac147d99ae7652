"""Reading a server's IDLE responses without blocking the listener's threads (RFC 2177 IDLE, RFC 5465 NOTIFY).

Split out of sync.imap.idle: the socket-level reads under imaplib, apart from the listener's bookkeeping.
"""

import select

from django.conf import settings


class SocketReader:
    """A read buffer over the connection's socket, in place of imaplib's socket.makefile() file.

    The capped connection (sync.imap.client._PinnedIMAP4) reads through
    file.peek(), file.read() and file.read1(). A file from makefile() refuses
    every read after one read timed out ("cannot read from timed out object"),
    and its buffer cannot be inspected without a read that may block; IDLE needs
    both: to know whether a line is already buffered, and to survive a wait that
    ends. Reads go straight to sock.recv() (its timeout set by the connection).
    """

    def __init__(self, sock):
        self.sock, self.buffer = sock, bytearray()

    def buffered(self) -> bool:
        """Whether bytes are waiting here or in the TLS layer (which poll() does not see)."""
        return bool(self.buffer) or bool(getattr(self.sock, "pending", lambda: 0)())

    def peek(self, size: int = 1) -> bytes:
        if not self.buffer:
            self.buffer += self.sock.recv(65536)
        return bytes(self.buffer)

    def read1(self, size: int) -> bytes:
        self.peek()
        return self.read(size)

    def read(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def close(self) -> None:
        self.buffer.clear()


def readable(sock, seconds: float) -> bool:
    """Whether the socket has bytes to read within `seconds` (poll(2); 0: only what is there now)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(seconds * 1000))


def untagged(line: bytes) -> tuple:
    """b"* 3 EXISTS" -> (b"3", b"EXISTS"); b"* OK Still here" -> (b"OK", b"Still here")."""
    return tuple(line.removeprefix(b"* ").split(b" ", 1 if line.startswith((b"* OK", b"* NO", b"* BYE")) else 2))


def idle_check(client) -> list:
    """What the server sent during IDLE: untagged responses split in words
    ([] after IMAP_IDLE_CHECK_SECONDS of silence), e.g. [(b"3", b"EXISTS"), (b"1", b"RECENT")].

    Waits in poll() on the socket, then reads whole lines while more is buffered
    or readable at once. Every untagged line during IDLE is an answer of its own
    (the command time cap IMAP_COMMAND_MAX_SECONDS must not end a long IDLE).
    imaplib's abort (the server closed) and timeouts inside a line propagate:
    the caller reconnects and catches up.
    """
    imap4 = client._imap
    reader = imap4.file
    if not reader.buffered() and not readable(imap4.sock, settings.IMAP_IDLE_CHECK_SECONDS):
        return []
    responses = []
    while True:
        imap4._start_answer()
        responses.append(untagged(imap4._get_line()))
        if not reader.buffered() and not readable(imap4.sock, 0):
            return responses
