"""Start throw-away PostgreSQL and Redis before Django reads its settings.

Loaded with `-p tests.servers_plugin` (see pyproject). The wrapper runs before
pytest-django sets Django up, so DATABASE_URL and the broker point at real
servers that live exactly as long as the test session. An operator may set
DATABASE_URL / REDIS_URL to use servers of their own instead.
"""

import os

import pytest

from portal.devservers import Postgres, Redis

_started = []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    if os.environ.get("PYTEST_XDIST_WORKER") is None and not early_config.known_args_namespace.help:
        if not os.environ.get("DATABASE_URL"):
            postgres = Postgres().start()
            _started.append(postgres)
            os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:{postgres.port}/postgres"
        if not os.environ.get("REDIS_URL"):
            redis = Redis().start()
            _started.append(redis)
            os.environ["REDIS_URL"] = redis.url
        os.environ["CELERY_BROKER_URL"] = os.environ["REDIS_URL"]
        # Tests must never touch the developer's own data folder.
        os.environ.setdefault("PORTAL_DATA_DIR", os.path.join(_started[0].base if _started else "/tmp", "portal-data"))
    return (yield)


def pytest_unconfigure(config):
    while _started:
        _started.pop().stop()
