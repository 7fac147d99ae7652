"""The Exchange on-premises flow: which sign-in the server wants, then verify and read cursors."""

import re

from django.conf import settings

from sync import egress
from sync.exchange import client as ews
from sync.exchange.client import error_code  # noqa: F401 - the migration's callers use it from here

AUTO = "auto"
# NTLM first: on-premises Exchange offers it almost always, and unlike Basic
# the password itself never crosses the wire. "Negotiate" includes NTLM.
_OFFERS_NTLM = re.compile(r"\b(ntlm|negotiate)\b", re.I)
_OFFERS_BASIC = re.compile(r"\bbasic\b", re.I)


def auth_type_offered(url: str, ca_pem: str) -> str:
    """Ask the server without credentials which sign-in it accepts (its 401 says so).

    Through the egress guard, like every connection to a user-supplied host.
    """
    with ews.mailbox_errors():
        response = egress.guarded_request(
            "POST", url, timeout=settings.MAIL_CONNECT_TIMEOUT, max_redirects=0, ca_pem=ca_pem,
            headers={"Content-Type": "text/xml; charset=utf-8"}, data=b"",
        )
    offered = response.headers.get("WWW-Authenticate", "")
    if _OFFERS_BASIC.search(offered) and not _OFFERS_NTLM.search(offered):
        return "basic"
    return "ntlm"


def verify(connection: dict, address: str, password: str, *, heartbeat=None) -> tuple[dict, dict]:
    """Log in, find and walk every mail folder, return (connection with the auth type settled, cursors).

    cursors: {folder name: {"ews_folder_id", "ews_folder", "ews_sync_state"}} from
    sync.exchange.client.verify; the handoff keys each folder's row by its FolderId.
    """
    if connection.get("auth_type", AUTO) == AUTO:
        connection = {**connection, "auth_type": auth_type_offered(connection["ews_url"], connection.get("ca_pem", ""))}
    return connection, ews.verify(ews.settings_from(connection, address), password, heartbeat=heartbeat)
