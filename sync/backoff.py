"""The push listener's reconnect back-off, shared by its IMAP IDLE connections and EWS watches."""

import random

from django.conf import settings


def reconnect_delay(failures: int) -> float:
    """Seconds to wait after `failures` failed connects in a row: IMAP_IDLE_BACKOFF_SECONDS doubled per
    failure, capped at IMAP_IDLE_BACKOFF_MAX_SECONDS, times a jitter of 0.5-1.5 (so connections a server
    dropped together do not all come back in the same second)."""
    base = min(settings.IMAP_IDLE_BACKOFF_MAX_SECONDS, settings.IMAP_IDLE_BACKOFF_SECONDS * 2 ** min(failures, 16))
    return base * random.uniform(0.5, 1.5)
