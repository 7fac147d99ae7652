"""The action cell of each account row on the settings page, written in Python instead of the template.

The page is the busiest one a user opens (issue 13): in the template each row's if/elif chain, {% url %} and
{% csrf_token %} cost ~40 µs; here a row costs a few. The markup is the template's as it was: a link, or a
POST form with the CSRF field (the page's one token, Django's "csrfmiddlewaretoken") and one button.
"""

import functools

from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from migration.models import Status

_FORM = ('<form method="post" action="{}"><input type="hidden" name="csrfmiddlewaretoken" value="{}">'
         '<button type="submit" class="button danger">{}</button></form>')


@functools.lru_cache(maxsize=16)
def _labels(language: str | None) -> dict[str, str]:
    """The cell's labels in `language` (the active one when called: the cache's key)."""
    return {"view": gettext("Stand ansehen"), "continue": gettext("Migration fortsetzen"),
            "start": gettext("Zu V3 migrieren"), "failed": gettext("Letzter Versuch fehlgeschlagen"),
            "reconnect": gettext("Neu verbinden"), "password": gettext("Passwort neu eingeben")}


class Paths:
    """URL of a route with one integer argument, reversed once per name and page: "/…/0/" with the id put in
    for the 0 (the routes end in "<int:…>/"). Falls back to reverse() for a route that does not."""

    def __init__(self):
        self._prefixes: dict[str, str | None] = {}

    def __call__(self, name: str, pk: int) -> str:
        if name not in self._prefixes:
            path = reverse(name, args=[0])
            self._prefixes[name] = path[:-2] if path.endswith("/0/") else None
        prefix = self._prefixes[name]
        return f"{prefix}{int(pk)}/" if prefix is not None else reverse(name, args=[pk])


def actions(row: dict, *, csrf_token: str, language: str | None, paths: Paths) -> SafeString:
    """The HTML of a row's action cell (row: a dict of migration.selectors.settings_page_rows). Empty when
    there is nothing to do."""
    labels = _labels(language)
    running, latest = row["active"], row["latest"]
    if running:
        label = labels["view"] if running["status"] == Status.AWAITING_ADMIN_CONSENT else labels["continue"]
        return format_html('<a class="button" href="{}">{}</a>', paths("migration-detail", running["pk"]), label)
    if row["engine"] == "v2":
        html = format_html(_FORM, paths("migration-start", row["pk"]), csrf_token, labels["start"])
        if latest and latest["status"] == Status.FAILED:
            html += format_html('<a href="{}">{}</a>', paths("migration-detail", latest["pk"]), labels["failed"])
        return html
    if row["status"] == "reconnect":
        if row["provider_kind"] in ("microsoft", "google"):
            route = f"{row['provider_kind']}-reconnect"
            return format_html(_FORM, paths(route, row["pk"]), csrf_token, labels["reconnect"])
        return format_html('<a class="button danger" href="{}">{}</a>', paths("account-new-password", row["pk"]),
                           labels["password"])
    return SafeString("")
