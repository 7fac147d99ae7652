"""The egress and detection settings: bad values stop start-up and name the variable."""

import pytest

from tests.test_settings_env import _start


@pytest.mark.parametrize("name, value", [
    ("EGRESS_ALLOW_NETWORKS", "127.0.0.1/33"),
    ("EGRESS_ALLOW_NETWORKS", "10.0.0.0/8,intranet"),
    ("EGRESS_RATE_PER_USER", "0"),
    ("EGRESS_RATE_PER_DESTINATION", "viele"),
    ("DNS_NAMESERVERS", "dns.example.com"),
    ("DNS_NAMESERVERS", "127.0.0.1:99999"),
    ("DNS_TIMEOUT", "0"),
    ("DETECTION_HTTP_LOOKUPS", "vielleicht"),
    ("DETECTION_HTTP_TIMEOUT", "kurz"),
    ("DETECTION_CACHE_SECONDS", "-1"),
    ("ISPDB_URL", "file:///etc/ispdb/"),
])
def test_it_names_the_bad_variable(name, value, tmp_path):
    result = _start(**{name: value, "PORTAL_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert name in result.stderr


@pytest.mark.parametrize("value", ["127.0.0.1:5353", "10.0.0.53", "fd00::53", "[fd00::53]:5353,10.0.0.53"])
def test_it_accepts_nameservers_with_and_without_a_port(value, tmp_path):
    result = _start(DNS_NAMESERVERS=value, PORTAL_DATA_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
