"""The Redis cache (portal/cache.py) builds one redis.Redis per connection pool, not one per cache call,
and still works across a Redis restart (the pool reconnects; the client holds no connection)."""

import redis
from django.core.cache import caches

from portal.cache import RedisCache
from portal.devservers import Redis


def test_cache_calls_share_one_redis_client_per_pool(monkeypatch):
    built = []
    original = redis.Redis.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting_init)
    cache = caches.create_connection("default")
    assert type(cache).__module__ == "portal.cache"
    for number in range(5):
        cache.set(f"i13-cache-client-{number}", number, 30)
        assert cache.get(f"i13-cache-client-{number}") == number
    cache.delete_many([f"i13-cache-client-{number}" for number in range(5)])
    assert len(built) == 1  # Django's own client: 11 (one per call)


def test_a_shared_client_survives_a_redis_restart():
    server = Redis().start()
    try:
        cache = RedisCache(server.url, {"OPTIONS": {"socket_connect_timeout": 3, "socket_timeout": 3}})
        cache.set("restart", "before", 30)
        server.kill()
        server.start()  # same port, empty (no appendonly)
        assert cache.get("restart") is None  # the pool's dead connection is replaced, not an error
        cache.set("restart", "after", 30)
        assert cache.get("restart") == "after"
    finally:
        server.stop()
