"""The Microsoft settings come from the environment (bad values: tests/test_settings_env.py)."""

from tests.test_settings_env import _start


def test_it_never_echoes_the_client_secret(tmp_path):
    result = _start(MS_CLIENT_SECRET="Very~Secret~Value", MS_AUTHORITY="http://x/y", PORTAL_DATA_DIR=str(tmp_path))
    assert result.returncode != 0 and "Very~Secret~Value" not in result.stderr


def test_it_takes_the_authority_and_app_names_from_the_environment(tmp_path):
    import subprocess
    import sys

    from tests.test_settings_env import ROOT

    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.MS_AUTHORITY, s.MS_GRAPH_URL, s.MS_INSTANCE_DISCOVERY, s.MS_APP_DISPLAY_NAME)")
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "portal.settings", "PORTAL_DATA_DIR": str(tmp_path),
           "MS_AUTHORITY": "https://login.microsoftonline.com/common/", "MS_INSTANCE_DISCOVERY": "false",
           "MS_APP_DISPLAY_NAME": "Acme CRM"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["https://login.microsoftonline.com/common", "https://graph.microsoft.com", "False",
                                  "Acme", "CRM"]
