"""Settings of the web benchmark only: the portal's settings with scripts/bench_web_urls.py as URLconf."""

from portal.settings import *  # noqa: F401,F403 - the production settings, unchanged but for the URLconf

ROOT_URLCONF = "bench_web_urls"
