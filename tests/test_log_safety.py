"""A page that fails is logged (django.request), by exception type and location, never with the message."""

import logging

import pytest
from django.test import Client
from django.urls import path

from portal import urls as portal_urls

SECRET = "refresh-token-4711-geheim"


def failing_view(request):
    try:
        raise KeyError(SECRET)
    except KeyError as error:
        raise RuntimeError(f"the token endpoint said {SECRET}") from error


urlpatterns = [path("boom/", failing_view), *portal_urls.urlpatterns]


def _console_output(record) -> str:
    handler = logging.getLogger("django.request").handlers[0]
    return handler.format(record)


@pytest.mark.django_db
def test_a_failed_page_is_logged_with_type_and_location_but_not_the_message(settings, monkeypatch):
    settings.ROOT_URLCONF = __name__
    records = []
    handler = logging.getLogger("django.request").handlers[0]
    monkeypatch.setattr(handler, "emit", records.append)
    response = Client(raise_request_exception=False).get("/boom/")
    assert response.status_code == 500
    assert len(records) == 1
    text = _console_output(records[0])
    assert "Internal Server Error: /boom/" in text
    assert "RuntimeError" in text and "KeyError" in text  # the exception and its cause, by type
    assert "test_log_safety.py" in text and "failing_view" in text  # where
    assert SECRET not in text


def test_every_project_logger_writes_through_the_safe_formatter():
    for name in ("portal", "sync", "migration", "django.request"):
        handlers = logging.getLogger(name).handlers
        # (pytest adds its own capturing handlers next to ours)
        assert any(type(h.formatter).__name__ == "TypeAndLocationFormatter" for h in handlers), name


def test_describe_names_the_type_and_the_innermost_frames_never_the_message():
    from portal.logsafe import describe

    def inner():
        raise ValueError(SECRET)

    try:
        inner()
    except ValueError as error:
        text = describe(error)
    assert text.startswith("ValueError at ") and "in inner < " in text and "test_log_safety.py" in text
    assert SECRET not in text
