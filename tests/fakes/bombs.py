"""Hostile answers for the tests of the byte and time caps: compression bombs and answers that trickle.

    gzip_bomb(200 * 2**20)  -> ~200 KB that a client inflates to 200 MB
    drip(write, b"...")     -> one byte every DRIP_INTERVAL seconds, until the client hangs up

Bombs are built once per session (cached) so a test's memory measurement does
not see them being built.
"""

import functools
import time
import zlib

BOMB_BYTES = 200 * 1024 * 1024  # inflated size: far over every cap, small on the wire
DRIP_INTERVAL = 0.05
DRIP_SECONDS = 8  # long enough that every cap the tests set (1-2 s) is passed; a client without one waits this long


@functools.lru_cache(maxsize=None)
def bomb(inflated: int = BOMB_BYTES, encoding: str = "gzip", prefix: bytes = b'{"value": ["') -> bytes:
    """`prefix`, then spaces up to `inflated` bytes, compressed as Content-Encoding `encoding` (gzip or deflate)."""
    wbits = {"gzip": 31, "deflate": 15}[encoding]  # 31: gzip header; 15: zlib wrapper (HTTP "deflate")
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b" " * (1024 * 1024)
    parts = [compressor.compress(prefix)]
    parts.extend(compressor.compress(block) for _ in range(max(0, inflated - len(prefix)) // len(block)))
    parts.append(compressor.flush())
    return b"".join(parts)


def drip(write, data: bytes = b" " * 10_000, *, seconds: float = DRIP_SECONDS) -> int:
    """Write `data` one byte per DRIP_INTERVAL for at most `seconds`; the number of bytes the client took."""
    sent = 0
    end = time.monotonic() + seconds
    try:
        for byte in data:
            if time.monotonic() > end:
                break
            write(bytes([byte]))
            sent += 1
            time.sleep(DRIP_INTERVAL)
    except OSError:  # the client hung up: what a cap does
        pass
    return sent
