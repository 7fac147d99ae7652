"""The settings page (E-Mail-Synchronisierung) costs a fixed number of database queries, whatever the
number of accounts and migrations a user has (the page is the busiest one a user opens)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from migration.models import Migration
from migration.selectors import current_campaign

pytestmark = pytest.mark.django_db

# User, accounts with their skipped counts, the migrations (session and V2 banner come from the cache).
SETTINGS_PAGE_QUERIES = 3


def add_accounts(user, make_account, first: int, count: int) -> None:
    for number in range(first, first + count):
        account = make_account(user, f"konto{number}@example.org", engine="v2")
        for status in ("failed", "awaiting_user"):
            Migration.objects.create(account=account, user=user, campaign=current_campaign(), provider_kind="imap",
                                     status=status, error_code="auth_failed" if status == "failed" else "")


def page_queries(client) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("settings-mail"))
    assert response.status_code == 200
    return [query["sql"] for query in queries.captured_queries]


def test_settings_page_query_count_does_not_grow_with_accounts(signed_in, user, make_account):
    add_accounts(user, make_account, 0, 1)
    page_queries(signed_in)  # fills the banner's cache, as any earlier page of the session has
    one = page_queries(signed_in)
    add_accounts(user, make_account, 1, 9)
    page_queries(signed_in)  # the new V2 accounts changed the banner: the services dropped its cache
    ten = page_queries(signed_in)
    assert len(ten) == len(one), "\n".join(q[:150] for q in one + ["----"] + ten)
    assert len(ten) <= SETTINGS_PAGE_QUERIES, "\n".join(ten)


def test_templates_are_compiled_once_per_process():
    """The cached template loader is on (Django's default since 4.1 when TEMPLATES names no loaders):
    a page's templates are read and compiled once per process, not on every request."""
    from django.template import engines
    from django.template.loaders.cached import Loader as CachedLoader

    engine = engines["django"].engine
    first = engine.get_template("migration/settings_mail.html")
    assert isinstance(engine.template_loaders[0], CachedLoader)
    assert engine.get_template("migration/settings_mail.html") is first
