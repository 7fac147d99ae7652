"""Encryption at rest for credentials and tokens (MultiFernet, key rotation).

Keys come from ENCRYPTION_KEYS (comma-separated, newest first). Without it the
embedded default creates a key file in DATA_DIR, outside git, and says so.
"""

import json
import logging
import os
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)


class SecretUnreadable(Exception):
    """The ciphertext was made with a key that is no longer configured."""


def _load_key_file() -> list[str]:
    if settings.PORTAL_REQUIRE_SECRETS:
        # Production: settings stop start-up without keys; never make one up here either.
        raise ImproperlyConfigured("ENCRYPTION_KEYS must be set when PORTAL_REQUIRE_SECRETS is true")
    path = settings.ENCRYPTION_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting at once must not write two keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(Fernet.generate_key().decode() + "\n")
            logger.warning(
                "No ENCRYPTION_KEYS set: created a local key file at %s (keep it, "
                "and set ENCRYPTION_KEYS in production).", path,
            )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@lru_cache(maxsize=1)
def _fernet() -> MultiFernet:
    keys = list(settings.ENCRYPTION_KEYS) or _load_key_file()
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            "ENCRYPTION_KEYS must hold Fernet keys (32 url-safe base64 bytes), comma-separated"
        ) from None


def reset_keys() -> None:
    """Forget the loaded keys (after a settings change or a rotation)."""
    _fernet.cache_clear()


def encrypt_json(value: dict) -> str:
    return _fernet().encrypt(json.dumps(value).encode()).decode()


def decrypt_json(token: str) -> dict:
    if not token:
        return {}
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        raise SecretUnreadable() from None


def rotate(token: str) -> str:
    """Re-encrypt a token with the newest key (MultiFernet.rotate)."""
    if not token:
        return token
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable() from None
