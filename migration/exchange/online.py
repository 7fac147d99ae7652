"""Exchange Online is not Exchange on-premises: its mailboxes migrate through Microsoft Graph.

Microsoft retires EWS in Exchange Online: blocked from 1 October 2026 unless the
tenant's admin allow-lists the app (EWSEnabled=True plus an AppID allow list),
and switched off for good on 1 April 2027, with no exceptions; Exchange Server
on-premises keeps EWS. Sources: the Exchange Team Blog, "Retirement of Exchange
Web Services in Exchange Online" (September 2023,
https://techcommunity.microsoft.com/blog/exchange/retirement-of-exchange-web-services-in-exchange-online/3924440)
and the timeline update in Microsoft 365 Message Center MC1227454 (February 2026).
A V3 connection over EWS to Exchange Online would therefore stop within months;
the portal sends such mailboxes to the Microsoft 365 (Graph) sign-in instead.
"""

import fnmatch
import re

from django.utils.translation import gettext_lazy as _

# Host names under which Microsoft serves Exchange Online's EWS and Autodiscover, worldwide and in the
# national clouds (US government, China/21Vianet); *.outlook.com covers autodiscover-s.outlook.com.
EXCHANGE_ONLINE_HOSTS = (
    "outlook.office365.com", "outlook.office.com", "*.outlook.com", "outlook.com", "*.office365.com",
    "outlook.office365.us", "*.office365.us", "partner.outlook.cn", "*.partner.outlook.cn",
)
# An anonymous Autodiscover/EWS request to Exchange Online is answered 401 with a Bearer challenge
# naming Microsoft Entra ID as the authority.
_ENTRA_CHALLENGE = re.compile(r"authorization_uri=\"?https://login\.(microsoftonline\.com|microsoftonline\.us|"
                              r"chinacloudapi\.cn|partner\.microsoftonline\.cn)/", re.I)

# The flash after the switch; the Microsoft step itself says why (EWS blocked from October 2026, off April 2027).
EXPLANATION = _("%(host)s gehört zu Exchange Online (Microsoft 365): Sie melden sich deshalb mit Microsoft an. "
                "Ihr Passwort wurde nicht verwendet.")


def is_exchange_online(host: str) -> bool:
    """Whether host (a name, any case, trailing dot allowed) is one of Exchange Online's servers."""
    host = (host or "").strip().rstrip(".").lower()
    return bool(host) and any(fnmatch.fnmatchcase(host, pattern) for pattern in EXCHANGE_ONLINE_HOSTS)


def challenge_is_exchange_online(www_authenticate: str) -> bool:
    """Whether a 401's WWW-Authenticate header is Exchange Online's (a Bearer challenge from Entra ID)."""
    return bool(_ENTRA_CHALLENGE.search(www_authenticate or ""))
