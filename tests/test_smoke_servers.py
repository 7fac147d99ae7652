import pytest
from django.db import connection


@pytest.mark.django_db
def test_it_runs_on_postgresql():
    assert connection.vendor == "postgresql"


def test_it_uses_redis_as_broker():
    from portal.celery import app

    assert app.conf.broker_url.startswith("redis://127.0.0.1:")
