"""The detection settings accept what they should (bad values: tests/test_settings_env.py)."""

import pytest

from tests.test_settings_env import _start


@pytest.mark.parametrize("value", ["127.0.0.1:5353", "10.0.0.53", "fd00::53", "[fd00::53]:5353,10.0.0.53"])
def test_it_accepts_nameservers_with_and_without_a_port(value, tmp_path):
    result = _start(DNS_NAMESERVERS=value, PORTAL_DATA_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
