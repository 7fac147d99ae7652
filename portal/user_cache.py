"""Who is signed in, read from the cache instead of the database on every request.

Django's AuthenticationMiddleware loads the user row for every signed-in request: on the settings page that
query and the ORM around it were ~0.35 ms of the page's ~1.9 ms of CPU (scripts/bench_work.py, issue 13).
Here the row is kept in the shared cache (Redis in production) beside the session, under the user's id:

- A hit is accepted only when the session's auth hash equals the one stored with the row, so a password
  change, or a session not made by a login, still ends the session (Django's own check then runs).
- Anything unusual (no hash, an unlisted backend, a mismatch) falls back to django.contrib.auth.get_user,
  which verifies, rotates to SECRET_KEY_FALLBACKS or flushes exactly as without this cache.
- Every save or delete of a user drops the entry (`forget`, connected in portal.apps): deactivating a user
  in the admin takes effect on their next request, not after CACHE_SECONDS. A request that read the row
  just before the save and stores it just after cannot bring the old row back: `forget` gives the user a new
  generation, read in the same round trip as the entry, and an entry is used only with the generation it
  was read under.
- The cached copy holds no password hash: the field is left deferred, so reading it loads it from the
  database, and saving the copy writes only the fields it holds (Django saves the loaded fields of a
  deferred instance), never an empty password.
"""

import functools
import secrets

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.functional import SimpleLazyObject

from portal import banner

# Seconds an entry lives at most: the bound for a change made past the model (a queryset update()).
CACHE_SECONDS = 300
# Seconds a generation lives: longer than any entry stored under the one before it (CACHE_SECONDS after a
# read that came just before the change), so an expired generation cannot make such an entry valid again.
GENERATION_SECONDS = 12 * CACHE_SECONDS


def cache_key(user_id) -> str:
    """The cache key of a user's entry (user_id: the primary key, int or its string from the session).

    It carries a digest of SECRET_KEY: after a key rotation no entry made with the old key is used, and
    Django's own check decides about each session (fallback keys, flush).
    """
    # "2": the entry's shape (auth hash, generation, field names, values); a new shape gets a new key, so
    # entries an older release left in a shared cache are never unpacked.
    return f"auth-user:2:{_key_digest(settings.SECRET_KEY)}:{user_id}"


def generation_key(user_id) -> str:
    """The cache key of a user's generation: a random token `forget` replaces (user_id as for cache_key)."""
    return f"auth-user-generation:{_key_digest(settings.SECRET_KEY)}:{user_id}"


@functools.lru_cache(maxsize=4)
def _key_digest(secret_key: str) -> str:
    return salted_hmac("portal.user_cache", "entries", secret=secret_key, algorithm="sha256").hexdigest()[:12]


def get_user(request):
    """request.user for a request: the cached user when the session proves it, else Django's get_user.

    Returns a user instance or AnonymousUser, as django.contrib.auth.get_user does; costs one cache read
    and no query on a hit. That read also fetches the banner's entries (portal.banner.cache_keys) and
    leaves them in request.prefetched_cache ({key: value}, missing keys absent). Errors of the cache itself
    (Redis down) propagate, as the session's do.
    """
    session = request.session
    try:
        user_id, backend, session_hash = session[SESSION_KEY], session[BACKEND_SESSION_KEY], session[HASH_SESSION_KEY]
    except KeyError:
        return auth.get_user(request)
    key = cache_key(user_id)
    # The generation and the banner's entries come in the same round trip (~50 µs of CPU saved per page).
    found = cache.get_many([key, generation_key(user_id), *banner.cache_keys(user_id)])
    request.prefetched_cache = found
    # Read before the row below: a save after this read gives a new generation, which outdates what we store.
    generation = found.get(generation_key(user_id))
    entry = found.get(key) if backend in settings.AUTHENTICATION_BACKENDS else None
    if entry is not None:
        auth_hash, entry_generation, names, values = entry
        if entry_generation == generation and session_hash and constant_time_compare(session_hash, auth_hash):
            # As the ORM builds a row it read (the user's class, not its pickle: ~5 µs against ~100 µs).
            return get_user_model().from_db(DEFAULT_DB_ALIAS, names, values)
    if generation is None:
        # Never store under "no generation": if the key were evicted later (a cache over its size culls),
        # an entry stored before the change it outdated would count again. One more round trip, per miss.
        cache.add(generation_key(user_id), secrets.token_hex(8), GENERATION_SECONDS)
        generation = cache.get(generation_key(user_id))
    user = auth.get_user(request)
    if user.is_authenticated and generation is not None:
        cache.set(key, (user.get_session_auth_hash(), generation, *_fields_without_password(user)), CACHE_SECONDS)
    return user


def _fields_without_password(user) -> tuple[tuple, tuple]:
    # The password is left out: on the instance from_db() builds it is a deferred field.
    names = tuple(field.attname for field in user._meta.concrete_fields if field.attname != "password")
    return names, tuple(getattr(user, name) for name in names)


def forget(user_id) -> None:
    """Outdate a user's entry now and again after the transaction commits: until the commit, a request
    still reads the old row."""
    _new_generation(user_id)
    transaction.on_commit(lambda: _new_generation(user_id))


def _new_generation(user_id) -> None:
    cache.set(generation_key(user_id), secrets.token_hex(8), GENERATION_SECONDS)
    cache.delete(cache_key(user_id))  # outdated already; dropped to free the memory at once


def forget_saved_user(sender, instance, **kwargs) -> None:
    """post_save/post_delete receiver for the user model: see forget()."""
    forget(instance.pk)


class CachedUserAuthenticationMiddleware(AuthenticationMiddleware):
    """Django's AuthenticationMiddleware with request.user served by get_user() above (request.auser, for
    async views, stays Django's)."""

    def process_request(self, request):
        super().process_request(request)
        request.user = SimpleLazyObject(lambda: _request_user(request))


def _request_user(request):
    if not hasattr(request, "_cached_user"):  # once per request, as Django's middleware does
        request._cached_user = get_user(request)
    return request._cached_user
