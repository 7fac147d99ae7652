"""URLconf of the web benchmark only (scripts/bench_work.py): the portal's URLs plus a hello-world view."""

from django.http import HttpResponse
from django.urls import path

from portal.urls import urlpatterns as portal_urlpatterns


def hello(request):
    """The floor the settings page is compared with: the same middleware, no template, no query."""
    return HttpResponse("Hallo")


urlpatterns = [path("bench/hello/", hello), *portal_urlpatterns]
