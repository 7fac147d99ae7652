"""Django's Redis cache backend, with one Redis client object per connection pool instead of one per call.

Why: django.core.cache.backends.redis.RedisCacheClient.get_client builds a new
redis.Redis for every cache call. The connections come from a shared pool, but
the client's constructor still fills its table of ~80 response callbacks each
time: measured at roughly 0.3-0.7 ms of CPU per call on the 2-core machine, and
the settings page makes two or more calls per request (the banner's accounts
and campaign dates, axes). A redis.Redis object is safe to share between
threads (redis-py documents client instances as thread-safe; each command takes
its own connection from the pool), so one per pool is enough.

Used by CACHES in portal/settings.py when REDIS_URL is set; behaviour is
otherwise Django's.
"""

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient as DjangoRedisCacheClient


class RedisCacheClient(DjangoRedisCacheClient):
    """Django's client, keeping one redis.Redis per pool index (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class RedisCache(DjangoRedisCache):
    """settings.CACHES backend: "portal.cache.RedisCache" (same LOCATION and OPTIONS as Django's)."""

    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = RedisCacheClient
