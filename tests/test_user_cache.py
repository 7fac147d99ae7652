"""The signed-in user is read from the cache, not the database, on every request (portal/user_cache.py),
and every way Django ends a session still ends it."""

import contextlib

import pytest
from django.contrib.auth import HASH_SESSION_KEY, get_user_model
from django.core.cache import cache
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portal import user_cache

pytestmark = pytest.mark.django_db

PAGE = "settings-mail"


def user_queries(client) -> tuple[int, list[str]]:
    """(status of the settings page, the SQL of its queries on the user table)."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse(PAGE))
    table = get_user_model()._meta.db_table
    return response.status_code, [query["sql"] for query in queries.captured_queries if f'"{table}"' in query["sql"]]


def test_it_reads_the_user_row_once_then_from_the_cache(signed_in):
    status, first = user_queries(signed_in)
    assert status == 200 and len(first) == 1
    status, second = user_queries(signed_in)
    assert status == 200 and second == []


def test_a_deactivated_user_is_signed_out_on_the_next_request(signed_in, user):
    user_queries(signed_in)  # cached
    user.is_active = False
    user.save()
    assert signed_in.get(reverse(PAGE)).status_code == 302


def test_a_deleted_user_is_signed_out_on_the_next_request(signed_in, user):
    user_queries(signed_in)
    user.delete()
    assert signed_in.get(reverse(PAGE)).status_code == 302


def test_a_password_change_elsewhere_ends_the_session(signed_in, user):
    user_queries(signed_in)
    user.set_password("ein-neues-passwort")
    user.save()
    assert signed_in.get(reverse(PAGE)).status_code == 302
    assert "_auth_user_id" not in signed_in.session  # flushed, as Django does


def test_a_session_whose_hash_does_not_match_is_flushed(signed_in):
    user_queries(signed_in)
    session = signed_in.session
    session[HASH_SESSION_KEY] = "0" * 64
    session.save()
    assert signed_in.get(reverse(PAGE)).status_code == 302
    assert "_auth_user_id" not in signed_in.session


def test_the_cached_entry_holds_no_password_hash(signed_in, user):
    user_queries(signed_in)
    auth_hash, _generation, names, values = cache.get(user_cache.cache_key(user.pk))
    assert "password" not in names
    assert user.password not in values and user.email in values
    assert auth_hash == user.get_session_auth_hash()


def cached_user(client):
    request = RequestFactory().get("/")
    request.session = client.session
    return user_cache.get_user(request)


def test_saving_the_cached_user_keeps_the_password(signed_in, user):
    user_queries(signed_in)
    cached = cached_user(signed_in)
    assert cached.pk == user.pk and "password" in cached.get_deferred_fields()
    cached.first_name = "Anna"
    cached.save()
    user.refresh_from_db()
    assert user.first_name == "Anna"
    assert user.check_password("geheim-123")
    # Read on purpose, it comes from the database.
    assert cached_user(signed_in).password == user.password


def test_entries_are_not_shared_across_secret_keys(settings, user):
    before = user_cache.cache_key(user.pk)
    settings.SECRET_KEY = "ein-anderer-schluessel-" + "x" * 40
    assert user_cache.cache_key(user.pk) != before


@contextlib.contextmanager
def password_changed_while_reading(user, monkeypatch):
    """Inside: a request reads the user row (old password, old auth hash), then another request changes the
    password and saves, then the first one goes on: the race a review found."""
    from django.contrib import auth

    read_row = auth.get_user

    def read_then_change_elsewhere(request):
        row = read_row(request)
        changed = get_user_model().objects.get(pk=user.pk)
        changed.set_password("ein-neues-passwort")
        changed.save()
        return row

    monkeypatch.setattr(auth, "get_user", read_then_change_elsewhere)
    try:
        yield
    finally:
        monkeypatch.setattr(auth, "get_user", read_row)


def test_a_row_read_before_a_password_change_is_not_cached_after_it(signed_in, user, monkeypatch):
    """The race a review found: a request reads the row, the password changes and the entry is dropped,
    then that request stores what it read. Its entry must not keep the old session signed in."""
    with password_changed_while_reading(user, monkeypatch):
        assert cached_user(signed_in).is_authenticated  # the racing request itself still had the old row
    assert cache.get(user_cache.cache_key(user.pk)) is not None  # it stored that row after the change ...
    assert signed_in.get(reverse(PAGE)).status_code == 302  # ... but the next request is signed out
    assert "_auth_user_id" not in signed_in.session


def test_an_entry_from_a_cache_shared_with_an_older_release_is_not_unpacked(signed_in, user):
    """The entry's shape changed (the generation): its key changed with it."""
    old_key = user_cache.cache_key(user.pk).replace("auth-user:2:", "auth-user:")
    cache.set(old_key, (user.get_session_auth_hash(), ("id",), (user.pk,)))
    assert user_queries(signed_in)[0] == 200
    assert user_queries(signed_in) == (200, [])


def test_an_entry_is_never_valid_without_its_generation(signed_in, user, monkeypatch):
    """A cache over its size drops keys it likes (the file cache culls a third): an entry stored before a
    password change must not count again once the generation key is gone (found by a review)."""
    cache.delete(user_cache.generation_key(user.pk))  # no generation yet (expired, or never saved)
    with password_changed_while_reading(user, monkeypatch):
        cached_user(signed_in)  # stores the old row after the change
    cache.delete(user_cache.generation_key(user.pk))  # evicted
    assert signed_in.get(reverse(PAGE)).status_code == 302
