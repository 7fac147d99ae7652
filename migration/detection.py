"""Which provider runs the mailbox of an address, and which server settings to propose.

Order: the built-in table of known domains, then the domain's MX records
(dnspython; nameservers and timeout are settings) matched against known MX
hosts, then, if DETECTION_HTTP_LOOKUPS is on, Thunderbird-style autoconfig,
Mozilla's ISPDB and Exchange Autodiscover, all through the egress guard.
An answer that fits more than one provider (IONOS sells IMAP and Microsoft
mailboxes behind the same MX) is reported as candidates, never guessed.

Per domain the facts are cached (DETECTION_CACHE_SECONDS); hints and the user
name are derived per call, so the cache holds no translated text. A result is
cached only when every source it depended on answered: a DNS timeout or an
unreachable Autodiscover is an outage, not a "no".
"""

import fnmatch
import re
from dataclasses import asdict, dataclass, field

import dns.exception
import dns.nameserver
import dns.resolver
import requests
from defusedxml import ElementTree as SafeET
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils.translation import gettext_lazy as _

from migration.exchange import online
from portal.env import parse_nameserver as _nameserver  # the forms portal.settings accepts
from sync import egress
from sync import provider_table
from sync.providers import APP_PASSWORD_HINT, IMAP_PROVIDERS, is_provider_host, username_for

# The table's facts (domains, MX rules, hints, sources) live in sync.provider_table.
PROVIDERS_BY_KEY = {p.key: p for p in provider_table.PROVIDERS}
MX_PATTERNS = tuple((rule.pattern, rule.provider) for rule in provider_table.MX_RULES)
AMBIGUOUS = provider_table.AMBIGUOUS
IMAP_KEYS = {*IMAP_PROVIDERS, "imap_other"}
LABELS = {
    "exchange": _("Microsoft Exchange"), "imap_other": _("Anderer IMAP-Anbieter"),
    **{key: p.label for key, p in PROVIDERS_BY_KEY.items()},
}
AUTOCONFIG_URL = "https://autoconfig.{domain}/mail/config-v1.1.xml"
AUTODISCOVER_URL = "https://autodiscover.{domain}/autodiscover/autodiscover.xml"
AUTODISCOVER_REQUEST = (
    '<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/'
    'outlook/requestschema/2006"><Request><EMailAddress>{address}</EMailAddress><AcceptableResponseSchema>'
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>"
    "</Request></Autodiscover>"
)
# RFC 6761 names that never have a mail server (the demo uses demo.localhost):
# no DNS question about them leaves the machine. ".test" is asked, so tests
# can serve it from their local nameserver.
SPECIAL_USE_TLDS = ("localhost", "invalid")
ASKS_FOR_LOGIN = re.compile(r"ntlm|negotiate|basic", re.I)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
CACHE_VERSION = 3  # 2: the market table (new providers, MX host overrides); 3: Host Europe, Mittwald, GMX business


@dataclass
class Detection:
    address: str
    domain: str
    provider: str  # a key of sync.provider_table (microsoft365, google, gmx, ...) | exchange | imap_other | unknown
    candidates: list[str]  # more than one: the user chooses
    source: str  # table | mx | autoconfig | autodiscover | none
    # {"protocol": "imap", host, port, security, username_form, username} or {"protocol": "ews", url, host, port}
    server: dict | None = None
    hints: list = field(default_factory=list)  # lazy translations
    needs_confirmation: bool = False  # the proposed server is outside the user's domain: ask first
    confirm_host: str = ""
    mx: list[str] = field(default_factory=list)
    help_url: str = ""  # the provider's own help page for the hints (app passwords, enabling IMAP)
    valid: bool = True  # False: not an e-mail address at all; nothing was looked up

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1

    def as_dict(self) -> dict:
        """JSON-ready, hints in the active language. Flat host/port/security/username
        keys mirror migration.imap.flow.detect() for the IMAP form."""
        data = asdict(self)
        imap = self.server if self.server and self.server["protocol"] == "imap" else {}
        data.update(
            hints=[str(hint) for hint in self.hints], label=str(LABELS.get(self.provider, "")),
            ambiguous=self.ambiguous, host=imap.get("host", ""), port=imap.get("port", 993),
            security=imap.get("security", "ssl"), username=imap.get("username", self.address),
        )
        return data


def detect(address: str) -> Detection:
    """Detect the provider of address; never raises for bad input or network trouble."""
    address = address.strip()
    domain = _ascii_domain(address.rpartition("@")[2])
    if not is_address(address):
        result = _build(address, "", {"provider": "unknown", "candidates": [], "source": "none"})
        result.valid = False
        return result
    key = f"detection:v{CACHE_VERSION}:{domain}"
    facts = cache.get(key)
    if facts is None:
        facts, definitive = _detect_domain(domain, address)
        if definitive:  # a DNS timeout is not an answer worth keeping
            cache.set(key, facts, settings.DETECTION_CACHE_SECONDS)
    return _build(address, domain, facts)


def is_address(address: str) -> bool:
    """Whether address looks like a deliverable e-mail address: a local part Django's EmailValidator
    accepts and a domain of at least two valid DNS labels (IDN allowed, checked in punycode)."""
    local, at, raw_domain = address.strip().rpartition("@")
    domain = _ascii_domain(raw_domain)
    if not at or not local or not domain:
        return False
    try:
        validate_email(f"{local}@{domain}")
    except ValidationError:
        return False
    return True


def host_needs_confirmation(domain: str, host: str) -> bool:
    """Like Thunderbird: credentials for a server outside the user's own domain need a yes first."""
    host = host.lower().rstrip(".")
    return not is_provider_host(host) and host != domain and not host.endswith("." + domain)


# --- the steps --------------------------------------------------------------------------------------------------


def _detect_domain(domain: str, address: str) -> tuple[dict, bool]:
    known = _provider_for_domain(domain)
    if known:
        return _facts(known, "table"), True
    if domain.rsplit(".", 1)[-1] in SPECIAL_USE_TLDS:
        return {"provider": "unknown", "candidates": [], "source": "none", "mx": []}, True
    mx, definitive = _mx_hosts(domain)
    for host in mx:
        rule = _rule_for_mx(host)
        if rule:
            imap_host = host if rule.host == "{mx}" else rule.host
            return _facts(rule.provider, "mx", mx=mx, imap_host=imap_host), True
    if settings.DETECTION_HTTP_LOOKUPS:
        found, answered = _http_lookups(domain, address, mx)
        definitive = definitive and answered
        if found:
            found["mx"] = mx
            return found, definitive
    if mx:
        return _facts("imap_other", "mx", mx=mx), definitive
    return {"provider": "unknown", "candidates": [], "source": "none", "mx": []}, definitive


def _facts(provider: str, source: str, *, mx=(), server: dict | None = None, imap_host: str = "") -> dict:
    if server is None and provider in IMAP_PROVIDERS and (imap_host or IMAP_PROVIDERS[provider].host):
        p = IMAP_PROVIDERS[provider]
        server = {"protocol": "imap", "host": imap_host or p.host, "port": p.port, "security": p.security,
                  "username_form": p.username_form}
    return {"provider": provider, "candidates": list(AMBIGUOUS.get(provider, [provider])), "source": source,
            "server": server, "mx": list(mx)}


def _provider_for_domain(domain: str) -> str | None:
    return next((p.key for p in provider_table.PROVIDERS if domain in p.domains), None)


def _rule_for_mx(host: str) -> provider_table.MxRule | None:
    return next((rule for rule in provider_table.MX_RULES if fnmatch.fnmatchcase(host, rule.pattern)), None)


def _mx_hosts(domain: str) -> tuple[list[str], bool]:
    """MX hosts by preference, and whether the answer is definitive (not a timeout)."""
    try:
        resolver = dns.resolver.Resolver(configure=not settings.DNS_NAMESERVERS)
    except dns.exception.DNSException:  # no /etc/resolv.conf
        return [], False
    if settings.DNS_NAMESERVERS:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*_nameserver(raw)) for raw in settings.DNS_NAMESERVERS]
    resolver.timeout = resolver.lifetime = settings.DNS_TIMEOUT
    try:
        answer = resolver.resolve(domain, "MX", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return [], True
    except dns.exception.DNSException:  # timeout, SERVFAIL, no nameserver answered
        return [], False
    # Sorted by preference, then name: equal preferences come back in any order, the result must not.
    records = sorted((record.preference, record.exchange.to_text(omit_final_dot=True).lower()) for record in answer)
    return [host for _preference, host in records if host and host != "."], True  # "0 ." is a null MX: no mail


def _ascii_domain(raw: str) -> str:
    try:
        domain = raw.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return ""
    labels = domain.split(".")
    return domain if len(labels) >= 2 and len(domain) <= 253 and all(_LABEL.match(label) for label in labels) else ""


# --- HTTP lookups (optional) -------------------------------------------------------------------------------------


def _http_lookups(domain: str, address: str, mx: list[str]) -> tuple[dict | None, bool]:
    """The first server an HTTP source proposes, and whether every source asked on the way answered.

    Any HTTP response is an answer, a 404 too. A source that could not be asked
    (timeout, refused connection) leaves the result open: during a short
    Autodiscover outage an Exchange domain would otherwise be cached as IMAP.
    """
    urls = [AUTOCONFIG_URL.format(domain=domain), settings.ISPDB_URL + domain]
    if mx:
        # ISPDB also knows hosters by their MX domain (Thunderbird asks it the same way).
        mx_domain = ".".join(mx[0].split(".")[-2:])
        if mx_domain != domain:
            urls.append(settings.ISPDB_URL + mx_domain)
    all_answered = True
    for url in urls:
        server, answered = _autoconfig(url, domain)
        all_answered = all_answered and answered
        if server:
            provider = next((p.key for p in IMAP_PROVIDERS.values() if p.host and p.host == server["host"]),
                            "imap_other")
            return _facts(provider, "autoconfig", server=server), all_answered
    server, answered = _autodiscover(domain, address)
    all_answered = all_answered and answered
    if server and server.get("exchange_online"):
        # EWS in Exchange Online is being switched off (migration.exchange.online): Graph instead.
        return _facts("microsoft365", "autodiscover"), all_answered
    if server:
        return _facts("exchange", "autodiscover", server=server), all_answered
    return None, all_answered


def _fetch(method: str, url: str, **kwargs) -> tuple[requests.Response | None, bool]:
    """The response (None if there is none), and whether the source answered at all."""
    try:
        return egress.guarded_request(method, url, timeout=settings.DETECTION_HTTP_TIMEOUT, **kwargs), True
    except egress.EgressRefused as error:
        # No such name, or a forbidden address: answers. A resolver that could not be asked is not.
        return None, error.reason != "resolver"
    except egress.EgressError:
        return None, False  # unreachable, timeout, TLS or protocol trouble: maybe different in a minute


def _xml(content: bytes):
    try:
        return SafeET.fromstring(content)
    except Exception:  # noqa: BLE001 - ParseError and defusedxml's refusals: not a usable document
        return None


def _autoconfig(url: str, domain: str) -> tuple[dict | None, bool]:
    """The first IMAP server with TLS from a Thunderbird clientConfig document, and whether url answered."""
    response, answered = _fetch("GET", url)
    root = _xml(response.content) if response is not None and response.status_code == 200 else None
    return (_imap_server(root, domain) if root is not None else None), answered


def _imap_server(root, domain: str) -> dict | None:
    for server in root.iter("incomingServer"):
        socket_type = (server.findtext("socketType") or "").strip().upper()
        if server.get("type") != "imap" or socket_type not in ("SSL", "STARTTLS"):
            continue  # never propose a plain-text login
        host = (server.findtext("hostname") or "").strip().lower().replace("%emaildomain%", domain)
        try:
            port = int(server.findtext("port") or 0)
        except ValueError:
            continue
        if not _ascii_domain(host) or not 0 < port < 65536:
            continue
        local_part = "%EMAILLOCALPART%" in (server.findtext("username") or "")
        return {"protocol": "imap", "host": host, "port": port,
                "security": "ssl" if socket_type == "SSL" else "starttls",
                "username_form": "localpart" if local_part else "address"}
    return None


def _autodiscover(domain: str, address: str) -> tuple[dict | None, bool]:
    """Exchange's POX Autodiscover, without credentials; and whether it answered."""
    body = AUTODISCOVER_REQUEST.format(address=_xml_text(address)).encode()
    response, answered = _fetch("POST", AUTODISCOVER_URL.format(domain=domain), data=body,
                                headers={"Content-Type": "text/xml; charset=utf-8"})
    return (_ews_server(response, domain) if response is not None else None), answered


def _ews_server(response, domain: str) -> dict | None:
    """The EWS server an Autodiscover response points to, if it comes from Exchange.

    An anonymous request usually gets a 401 that asks for NTLM/Negotiate/Basic:
    enough to know Exchange answers there, and its host usually serves EWS too.
    A 200 may name the EWS URL itself.
    """
    ews_url = ""
    challenge = response.headers.get("WWW-Authenticate", "")
    if response.status_code == 401 and online.challenge_is_exchange_online(challenge):
        return {"protocol": "ews", "exchange_online": True}
    if response.status_code == 200:
        root = _xml(response.content)
        if root is None or not root.tag.endswith("Autodiscover"):
            return None
        ews_url = next((el.text.strip() for el in root.iter() if el.tag.endswith("EwsUrl") and el.text), "")
    elif response.status_code != 401 or not ASKS_FOR_LOGIN.search(response.headers.get("WWW-Authenticate", "")):
        return None
    if not ews_url:
        ews_url = f"https://autodiscover.{domain}/EWS/Exchange.asmx"
    try:
        scheme, host, port = egress.split_url(ews_url)
    except egress.EgressRefused:
        return None
    if scheme != "https":
        return None
    if online.is_exchange_online(host):
        return {"protocol": "ews", "exchange_online": True}
    return {"protocol": "ews", "url": ews_url, "host": host.lower(), "port": port}


def _xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _build(address: str, domain: str, facts: dict) -> Detection:
    provider, candidates = facts["provider"], list(facts["candidates"])
    server = dict(facts["server"]) if facts.get("server") else None
    if server and server["protocol"] == "imap":
        server["username"] = username_for(address, server["username_form"])
    hints, help_url = [], ""
    for key in dict.fromkeys([provider, *candidates]):
        if key in PROVIDERS_BY_KEY:
            hints.extend(PROVIDERS_BY_KEY[key].hints)
            help_url = help_url or PROVIDERS_BY_KEY[key].help_url
    if IMAP_KEYS.intersection([provider, *candidates]):
        hints.append(APP_PASSWORD_HINT)
    confirm = bool(server and domain and host_needs_confirmation(domain, server["host"]))
    return Detection(
        address=address, domain=domain, provider=provider, candidates=candidates, source=facts["source"],
        server=server, hints=hints, needs_confirmation=confirm, confirm_host=server["host"] if confirm else "",
        mx=list(facts.get("mx", [])), help_url=help_url,
    )
