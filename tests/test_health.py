"""GET /health/: each dependency as JSON, 503 when the database, the cache or the broker is down."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from portal import heartbeats
from portal.devservers import Redis
from portal.models import Heartbeat
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def own_redis(monkeypatch):
    """Cache and broker on a Redis of this test's own, which it may kill."""
    server = Redis().start()
    caches = {"default": {"BACKEND": "portal.cache.RedisCache", "LOCATION": server.url,
                          "OPTIONS": {"socket_connect_timeout": 3, "socket_timeout": 3}}}
    monkeypatch.setenv("CELERY_BROKER_URL", server.url)  # celery reads it before its own settings
    # Given back before the server stops: the conftest's teardown clears the session's cache.
    with override_settings(CACHES=caches):
        yield server
    server.stop()


def _both_heartbeats_now():
    heartbeats.record(heartbeats.WORKER)
    heartbeats.record(heartbeats.CONTROL)
    heartbeats.record(heartbeats.BEAT)


@pytest.mark.django_db
def test_it_reports_every_dependency_ok_when_all_are_up(client):
    _both_heartbeats_now()
    response = client.get(reverse("health"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert body["status"] == "ok"
    assert {name: body["checks"][name] for name in ("database", "cache", "broker")} == {
        "database": "ok", "cache": "ok", "broker": "ok"}
    for name in ("worker", "control_worker", "beat"):
        assert body["checks"][name]["status"] == "ok"
        assert 0 <= body["checks"][name]["age_seconds"] <= 5


@pytest.mark.django_db
def test_it_answers_503_naming_the_cache_and_the_broker_while_redis_is_down(client, own_redis):
    _both_heartbeats_now()
    assert client.get(reverse("health")).status_code == 200  # the same Redis, up: healthy

    own_redis.kill()
    response = client.get(reverse("health"))
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["checks"]["cache"] == "down"
    assert body["checks"]["broker"] == "down"
    assert body["checks"]["database"] == "ok"
    # Nothing about where the dependencies live.
    assert str(own_redis.port) not in response.content.decode()
    assert "127.0.0.1" not in response.content.decode() and "redis://" not in response.content.decode()

    own_redis.start()  # back on the same port: healthy again without a restart of the web server
    assert client.get(reverse("health")).status_code == 200


@pytest.mark.django_db
def test_it_reports_a_stale_worker_heartbeat_as_degraded_but_serving(client, settings):
    _both_heartbeats_now()
    Heartbeat.objects.filter(name="worker").update(
        seen_at=timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_SECONDS + 60))
    response = client.get(reverse("health"))
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["worker"]["status"] == "stale"
    assert body["checks"]["worker"]["age_seconds"] >= settings.HEARTBEAT_STALE_SECONDS + 60
    assert body["checks"]["beat"]["status"] == "ok"


@pytest.mark.django_db
def test_it_reports_a_worker_and_beat_that_never_ran_as_missing(client):
    body = client.get(reverse("health")).json()
    assert body["status"] == "degraded"
    assert body["checks"]["worker"] == {"status": "missing", "age_seconds": None}
    assert body["checks"]["beat"] == {"status": "missing", "age_seconds": None}


@pytest.mark.django_db
def test_it_keeps_one_row_per_role_however_often_they_beat():
    for _ in range(3):
        _both_heartbeats_now()
    assert sorted(Heartbeat.objects.values_list("name", flat=True)) == ["beat", "control_worker", "worker"]


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_with_beat_records_both_heartbeats_and_their_files(client, settings, tmp_path):
    from django.db import connection

    db = connection.settings_dict
    worker_file, beat_file = tmp_path / "worker.heartbeat", tmp_path / "beat.tick"
    env = dict(os.environ, DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
               HEARTBEAT_SECONDS="1", WORKER_HEARTBEAT_FILE=str(worker_file), BEAT_TICK_FILE=str(beat_file))
    # The embedded default's shape: one worker with beat inside (scripts/run).
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "-B", "--pool=solo", "--loglevel=WARNING",
         "-s", str(tmp_path / "celerybeat-schedule")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        # No -Q: it consumes both queues, so it is the worker and the control worker.
        wait_for(lambda: Heartbeat.objects.filter(name__in=["worker", "control_worker", "beat"]).count() == 3,
                 timeout=60)
        first = dict(Heartbeat.objects.values_list("name", "seen_at"))
        # They keep beating: both rows move on (HEARTBEAT_SECONDS=1).
        wait_for(lambda: all(seen > first[name] for name, seen in Heartbeat.objects.values_list("name", "seen_at")),
                 timeout=30)
        assert worker_file.exists() and beat_file.exists()
        assert time.time() - worker_file.stat().st_mtime < 30
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    body = client.get(reverse("health")).json()
    assert body["checks"]["worker"]["status"] == "ok" and body["checks"]["beat"]["status"] == "ok"
    assert body["checks"]["control_worker"]["status"] == "ok"


@pytest.mark.django_db
def test_a_dead_control_worker_shows_although_the_sync_worker_beats(client, settings):
    """The control worker runs the fan-out: without it nothing is synced, whatever the other worker does."""
    _both_heartbeats_now()
    Heartbeat.objects.filter(name="control_worker").update(
        seen_at=timezone.now() - timedelta(seconds=settings.HEARTBEAT_STALE_SECONDS + 60))
    body = client.get(reverse("health")).json()
    assert body["status"] == "degraded"
    assert body["checks"]["control_worker"]["status"] == "stale" and body["checks"]["worker"]["status"] == "ok"


@pytest.mark.parametrize("queues, expected", [
    ("celery", ["worker"]), ("control", ["control_worker"]), ("celery,control", ["worker", "control_worker"]),
    (None, ["worker", "control_worker"])])
def test_a_worker_records_the_roles_of_the_queues_it_consumes(queues, expected, monkeypatch):
    from portal.celery import app

    monkeypatch.setattr(app.amqp.queues, "_consume_from", None)  # as a worker without -Q; restored after
    app.amqp.queues.select(queues.split(",") if queues else None)  # -Q
    assert heartbeats.roles(app) == expected
