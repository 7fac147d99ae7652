"""Strict readers for environment variables.

A bad value stops start-up with the variable's name in the message, so an
operator never runs with a silently ignored setting.
"""

import ipaddress
import os
from datetime import date
from urllib.parse import unquote, urlparse

from django.core.exceptions import ImproperlyConfigured


def envstr(name: str, default: str) -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def envlist(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def envdate(name: str, default: str) -> date:
    raw = os.environ.get(name) or default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a date like 2025-07-18, not {raw!r}") from None


def envdatabase(name: str, default: str) -> dict:
    """Parse a DATABASE_URL: sqlite:///path or postgres://user:pw@host:port/db."""
    raw = os.environ.get(name) or default
    url = urlparse(raw)
    if url.scheme == "sqlite":
        path = raw[len("sqlite:///") :] if raw.startswith("sqlite:///") else ""
        if not path:
            raise ImproperlyConfigured(f"{name} must look like sqlite:///path/db.sqlite3")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path}
    if url.scheme in ("postgres", "postgresql"):
        if not url.path.strip("/"):
            raise ImproperlyConfigured(f"{name} must name a database: postgres://host:5432/NAME")
        try:
            port = url.port
        except ValueError:
            raise ImproperlyConfigured(f"{name} has an invalid port") from None
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(url.path.strip("/")),
            "USER": unquote(url.username or ""),
            "PASSWORD": unquote(url.password or ""),
            "HOST": url.hostname or "",
            "PORT": str(port or ""),
            "CONN_MAX_AGE": 60,
            # Prepared statements: a query run a fifth time on a connection is planned once and reused. Our
            # queries are the same few texts again and again (pages, sync runs, the fan-out): planning was
            # ~0.1-0.5 ms of PostgreSQL's CPU each, executing ~0.02 ms (issue 13). Needs server-side binding.
            # Off for a pooler in transaction mode that cannot keep them (PgBouncer before 1.21).
            "OPTIONS": (
                {"server_side_binding": True, "prepare_threshold": 5}
                if envbool("DATABASE_PREPARED_STATEMENTS", True) else {}
            ),
        }
    # Never echo the URL: it may hold a password.
    raise ImproperlyConfigured(f"{name} must start with sqlite:/// or postgres://")


def parse_nameserver(raw: str) -> tuple[str, int]:
    """"10.0.0.53", "10.0.0.53:5353", "fd00::53" or "[fd00::53]:5353" -> (address, port); ValueError otherwise."""
    if raw.startswith("[") or raw.count(":") == 1:
        address, port = raw.rsplit(":", 1)
        address, port = address.strip("[]"), int(port)
    else:
        address, port = raw, 53
    ipaddress.ip_address(address)
    if not 0 < port < 65536:
        raise ValueError(raw)
    return address, port
