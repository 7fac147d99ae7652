"""Egress guard for connections to hosts that users supply.

Resolve once, refuse every address that is not globally routable (loopback,
private, link-local, CGNAT, unique-local, multicast, reserved and the IPv6
forms that embed such an IPv4 address), and hand back the checked address so
the caller connects to exactly that one. EGRESS_ALLOW_NETWORKS opens chosen
networks for development, tests and on-premises deployments.

HTTP goes through guarded_get / guarded_request: every hop (redirects too) is
resolved and checked again, the TCP connection goes to the checked address,
and TLS still verifies the certificate against the host name in the URL.
check_rate limits connection attempts per user and per destination, so the
login form is neither a port scanner nor a password-spraying relay.
PinnedAdapter can also cap each response: max_bytes of body after
decompression and max_seconds from sending the request to the body's last
byte (ResponseTooLarge, ResponseTooSlow).
"""

import ipaddress
import socket
import threading
import time
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings

from sync import http_caps
from sync.http_caps import WatchedAdapter
from sync.providers import PROVIDER_HOSTS

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Refused even where a Python version's is_global would let them pass.
_ALWAYS_REFUSED = [ipaddress.ip_network(net) for net in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15", "240.0.0.0/4",
    # IPv4-compatible (::a.b.c.d, deprecated) and SIIT-translated forms; is_global passes both.
    "::/96", "::ffff:0:0:0/96",
    "64:ff9b:1::/48", "2001::/23", "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10",
)]
REDIRECT_CODES = {301, 302, 303, 307, 308}
# Detection reads small XML documents; a hostile server must not fill memory.
DEFAULT_MAX_BYTES = 512 * 1024
RATE_WINDOW_SECONDS = 600


class EgressError(Exception):
    """A connection that did not happen or failed; code is what users see."""

    code = "unreachable"


class EgressRefused(EgressError):
    """The policy refused the destination (it never saw a packet from us).

    reason says why, for operators and for callers that cache answers:
    "forbidden" (an address the policy does not allow, or not a URL we
    follow), "unknown_name" (DNS says the name does not exist) or "resolver"
    (DNS could not be asked; may work in a minute). Users see none of this.
    """

    def __init__(self, host: str, reason: str = "forbidden"):
        super().__init__(f"egress policy refused {host} ({reason})")
        self.host = host
        self.reason = reason


class Unreachable(EgressError):
    """Closed port, timeout, reset: to users the same as a refusal."""


class TlsFailed(EgressError):
    code = "tls_failed"


class ProtocolFailed(EgressError):
    code = "protocol"


class TooLarge(ProtocolFailed):
    """The answer was bigger than max_bytes (counted after decompression)."""

    code = "too_large"


class TooSlow(Unreachable):
    """The whole request (every hop) took longer than max_seconds, however steadily bytes trickled in."""

    code = "too_slow"


class RateLimited(EgressError):
    code = "rate_limited"


class ResponseTooLarge(EgressError):
    """A body beyond the adapter's max_bytes once decompressed (a compressed bomb, or a broken server)."""

    code = "response_too_large"


class ResponseTooSlow(EgressError):
    """A response not complete within the adapter's max_seconds (a server that answers a byte at a time)."""

    code = "response_too_slow"


def _allow_networks():
    return [ipaddress.ip_network(net, strict=False) for net in settings.EGRESS_ALLOW_NETWORKS]


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour:
        return ip.sixtofour
    return None


def is_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if any(ip in net for net in _allow_networks()):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return is_allowed(str(inner))
    if any(ip in net for net in _ALWAYS_REFUSED if net.version == ip.version):
        return False
    # is_global is False for private, loopback, link-local, reserved...
    return ip.is_global and not ip.is_multicast


def lookup(host: str, port: int) -> list[tuple]:
    """socket.getaddrinfo(host, port, type=SOCK_STREAM), except for RFC 6761's special-use names, which are
    answered here without asking any nameserver: *.localhost is the loopback address (section 6.3), *.invalid
    does not exist (section 6.4, socket.gaierror EAI_NONAME), and localhost itself is looked up in its plain
    spelling only, which the hosts file answers. The system resolver would send the others to DNS.
    """
    # Compared in the form the resolver would look up: IDNA maps "x。invalid" and full-width letters too.
    name = _canonical_host(host).rstrip(".")
    if name == "invalid" or name.endswith(".invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "special-use name .invalid (RFC 6761)")
    if name.endswith(".localhost"):
        return socket.getaddrinfo("127.0.0.1", port, type=socket.SOCK_STREAM)
    if name == "localhost":
        # In the one spelling the system's hosts file answers ("localhost." or full-width letters went to DNS).
        return socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def resolve_checked(host: str, port: int) -> str:
    """Return one address of host that the policy allows, or raise.

    Every address the name resolves to must pass: a name that mixes a public
    and a private address is refused whole (DNS rebinding tricks).
    """
    try:
        infos = lookup(host, port)
    except socket.gaierror as error:
        unknown = error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
        raise EgressRefused(host, "unknown_name" if unknown else "resolver") from None
    except (UnicodeError, ValueError):
        raise EgressRefused(host, "unknown_name") from None  # not a name at all
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses or not all(is_allowed(address) for address in addresses):
        raise EgressRefused(host)
    return addresses[0]


def ascii_host(host: str) -> str:
    """The A-label form TLS and the Host header need ("bücher.de" -> "xn--bcher-kva.de")."""
    try:
        return host.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise EgressRefused(host) from None


# --- Rate limits ------------------------------------------------------------------------------------------------


def check_rate(user_id: int | None, host: str, port: int) -> None:
    """Count one connection attempt; raise RateLimited when a limit is used up.

    Two budgets per fixed window of RATE_WINDOW_SECONDS: the user's
    (EGRESS_RATE_PER_USER) and the destination's over all users
    (EGRESS_RATE_PER_DESTINATION). The user's is checked first, so a user who
    is over it does not also use up the destination's budget for everybody else.

    The destination is what would really be contacted: every address the host
    name resolves to now (sync.egress.resolve_checked connects to one of them),
    normalised (an IPv4-mapped, NAT64 or 6to4 IPv6 address is its IPv4 address;
    an IPv6 address stands for its /64, which one machine can hold whole). Other
    names, the IP literal in any spelling and IPv6 forms of an address all
    share one budget. Ports share it too: the budget protects a host from being
    password-sprayed or port-scanned through us, and a sweep over its ports is
    exactly such a scan. A name that does not resolve reaches nobody; its
    attempts count against the name itself.

    The big providers of the built-in table have no shared budget: near the
    deadline thousands of users log in there, and a few bad ones must not lock
    out the rest (the providers protect themselves; the per-user limit still
    holds). Their names are not even resolved here.

    Counted in the database (sync.models.AttemptBudget), so every web and
    worker process of every deployment shares the budgets, the embedded
    default (SQLite, no Redis) included.
    """
    window = int(time.time() // RATE_WINDOW_SECONDS)
    checks = []
    if user_id is not None:
        checks.append(([f"user:{user_id}"], settings.EGRESS_RATE_PER_USER))
    canonical = _canonical_host(host)
    if canonical not in PROVIDER_HOSTS:
        checks.append(([f"dest:{key}" for key in destination_keys(canonical, port)], settings.EGRESS_RATE_PER_DESTINATION))
    for keys, limit in checks:
        for key in keys:
            if _count(key, window) > limit:
                raise RateLimited(f"too many connection attempts ({key.split(':')[0]})")


def destination_keys(host: str, port: int) -> list[str]:
    """The budget keys of everything `host` resolves to ("203.0.113.7", "2001:db8:1:2::/64"), sorted.

    port is only passed to the resolver (the budget is per address). A name
    that does not resolve: ["name:<its canonical spelling>"].
    """
    canonical = _canonical_host(host)
    try:
        infos = lookup(canonical, port)
    except (OSError, UnicodeError, ValueError):
        return [f"name:{canonical}"[:200]]
    keys = {_address_key(info[4][0]) for info in infos}
    return sorted(keys) or [f"name:{canonical}"[:200]]


def _address_key(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # the zone of fe80::1%eth0 names our interface, not theirs
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return str(inner)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _canonical_host(host: str) -> str:
    """One spelling per name: "Mail.Example.com.", "bücher.de"/"xn--bcher-kva.de", "0x7f000001"/"127.1"."""
    host = host.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        # The legacy IPv4 forms the C resolver accepts (hex, octal, fewer dots).
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        pass
    try:
        return ascii_host(host)
    except EgressRefused:
        return host.lower().rstrip(".")


def _count(key: str, window: int) -> int:
    """Add one attempt to `key` in `window`; the attempts counted so far, this one included."""
    from sync.models import AttemptBudget  # not at import: the guard is also used before Django's apps are ready

    return AttemptBudget.count(key=key, window=window)


# --- HTTP ---------------------------------------------------------------------------------------------------------


class _Deadline:
    """Shuts down the connection of one request that is not answered in full within `seconds`.

    A read timeout bounds each read, not the answer: a server that sends a byte
    every few seconds never trips it. A timer does. It is armed before the
    request is sent, learns the connection when urllib3 sends on it (through
    http_caps.watched_by), and is disarmed when the body has been read (or
    reading it failed). Unlike http_caps.deadline it outlives send(): the body
    is read later, by requests or by an auth hook (requests_ntlm).
    """

    def __init__(self, seconds: float):
        self.lock = threading.Lock()
        self.connection = None
        self.fired = self.done = False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def watch(self, connection) -> None:
        with self.lock:
            self.connection = connection
            fired = self.fired
        if fired:
            http_caps.shut_down(connection)

    def finish(self) -> None:
        with self.lock:
            self.done = True
        self.timer.cancel()

    def _fire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            connection = self.connection
        if connection is not None:
            http_caps.shut_down(connection)


class PinnedAdapter(WatchedAdapter):
    """A requests adapter that connects to one checked address for one host name.

    urllib3 connects to host_params["host"]; we put the checked address there
    and hand the original name over as server_hostname (SNI) and
    assert_hostname (certificate check), so TLS is verified exactly as if we
    had connected by name. The Host header is set explicitly, otherwise
    http.client would send the address.

    max_bytes (body bytes after decompression) and max_seconds (from sending
    to the body's last byte) cap every response: over them reading the body
    raises ResponseTooLarge or ResponseTooSlow and the connection is closed.
    The body is still read lazily, by whoever reads it (requests, or an auth
    hook such as requests_ntlm's, which needs the response's socket first).
    Decompression itself is bounded per read by urllib3 (>= 2.6), so a
    compressed bomb never inflates far beyond max_bytes.
    """

    def __init__(self, *, host: str, address: str, ca_pem: str = "", max_bytes: int | None = None,
                 max_seconds: float | None = None, **kwargs):
        self.pinned_host = ascii_host(host)
        self.pinned_address = address
        self.ca_pem = ca_pem
        self.max_bytes, self.max_seconds = max_bytes, max_seconds
        super().__init__(**kwargs)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if (host_params["host"] or "").lower().rstrip(".") != self.pinned_host:
            # This adapter's check covered one host; anything else was not checked.
            raise EgressRefused(host_params["host"] or "")
        host_params["host"] = self.pinned_address
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = self.pinned_host
            pool_kwargs["assert_hostname"] = self.pinned_host
            extra = extra_ca_pem(self.ca_pem)
            if extra:
                # Loaded in addition to the default bundle, never instead of verification.
                pool_kwargs["ca_cert_data"] = extra
        return host_params, pool_kwargs

    def send(self, request, **kwargs):
        # Never "verify off", whatever a caller or library passes in.
        if kwargs.get("verify") is False:
            kwargs["verify"] = True
        kwargs["proxies"] = {}  # a proxy would connect by name and bypass the pin
        request.headers["Host"] = urlsplit(request.url).netloc.rsplit("@", 1)[-1]
        deadline = _Deadline(self.max_seconds) if self.max_seconds else None
        try:
            if deadline is None:
                response = super().send(request, **kwargs)
            else:
                with http_caps.watched_by(deadline):
                    response = super().send(request, **kwargs)
        except Exception:
            if deadline is not None:
                deadline.finish()
                if deadline.fired:
                    raise ResponseTooSlow(self.pinned_host) from None
            raise
        if self.max_bytes is not None or deadline is not None:
            _cap_body(response, max_bytes=self.max_bytes, deadline=deadline, host=self.pinned_host)
        return response


def _cap_body(response: requests.Response, *, max_bytes: int | None, deadline: _Deadline | None, host: str) -> None:
    """Make reading this response's body (requests' iter_content, hence .content) stop at the caps.

    Wraps the urllib3 response's stream() on this one object, so the response
    stays the urllib3 object auth hooks look into (requests_ntlm reads the
    peer certificate from its socket for the channel binding).
    """
    raw = response.raw
    read = raw.stream

    def stream(amt=2**16, decode_content=None):
        total, failure = 0, None
        try:
            for chunk in read(amt, decode_content=decode_content):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    failure = ResponseTooLarge(f"{host}: more than {max_bytes} bytes")
                    break
                if deadline is not None and deadline.fired:
                    break
                yield chunk
        except Exception:
            if deadline is None or not deadline.fired:
                raise
        finally:
            if deadline is not None:
                deadline.finish()
        if failure is None and deadline is not None and deadline.fired:
            failure = ResponseTooSlow(host)
        if failure is not None:
            response.close()  # the rest of the body stays unread: the connection must not be used again
            raise failure

    raw.stream = stream
    if deadline is not None:
        # A body closed or released unread (requests' Response.close) also ends the attempt: the timer must
        # not shut the connection down later, when the pool has handed it to another request.
        for name in ("close", "release_conn"):
            def disarm(_original=getattr(raw, name)):
                deadline.finish()
                return _original()

            setattr(raw, name, disarm)


def extra_ca_pem(ca_pem: str = "") -> str:
    """An account's own CA plus the deployment's MAIL_TLS_CA_FILE, as PEM text."""
    parts = [ca_pem.strip()] if ca_pem and ca_pem.strip() else []
    if settings.MAIL_TLS_CA_FILE:
        with open(settings.MAIL_TLS_CA_FILE, encoding="ascii") as handle:
            parts.append(handle.read().strip())
    return "\n".join(parts) + "\n" if parts else ""


def pinned_session(host: str, address: str, *, ca_pem: str = "", **adapter_kwargs) -> requests.Session:
    session = requests.Session()
    # No proxies, netrc or CA bundle from the environment: they would undo the pin or the verification.
    session.trust_env = False
    adapter = PinnedAdapter(host=host, address=address, ca_pem=ca_pem, **adapter_kwargs)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or EgressRefused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise EgressRefused(url[:100]) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        # No file://, gopher:// or credentials in the URL (requests would send them).
        raise EgressRefused(parts.hostname or url[:100])
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def destination(*, url: str = "", host: str = "", port: int | None = None) -> tuple[str, int]:
    """(host, port) a mailbox connection goes to: an EWS URL's, or an IMAP host and port."""
    if url:
        _scheme, host, port = split_url(url)
        return host, port
    return host, int(port or 993)


def guarded_get(url: str, *, timeout: float, max_redirects: int = 3, headers: dict | None = None,
                ca_pem: str = "", max_bytes: int = DEFAULT_MAX_BYTES, max_seconds: float | None = None) -> requests.Response:
    return guarded_request("GET", url, timeout=timeout, max_redirects=max_redirects, headers=headers,
                           ca_pem=ca_pem, max_bytes=max_bytes, max_seconds=max_seconds)


def guarded_request(method: str, url: str, *, timeout: float, max_redirects: int = 3, headers: dict | None = None,
                    data: bytes | None = None, ca_pem: str = "", max_bytes: int = DEFAULT_MAX_BYTES,
                    max_seconds: float | None = None) -> requests.Response:
    """One HTTP request to a user-influenced URL; redirects are followed by hand.

    Each hop is resolved and checked before anything is sent to it. The body
    is read completely and the connection closed. Caps: max_bytes per answer,
    counted after decompression (TooLarge; a gzip bomb is never inflated
    whole); max_seconds (default EGRESS_HTTP_MAX_SECONDS) for the whole
    request with every hop (TooSlow; `timeout` only bounds each wait for
    bytes). Raises EgressRefused, Unreachable, TlsFailed, ProtocolFailed or
    those two.
    """
    limit = settings.EGRESS_HTTP_MAX_SECONDS if max_seconds is None else max_seconds
    host = ""
    try:
        with http_caps.deadline(limit):
            for _hop in range(max_redirects + 1):
                _scheme, host, port = split_url(url)
                address = resolve_checked(host, port)
                response = _send(method, url, host=host, address=address, timeout=timeout, headers=headers,
                                 data=data, ca_pem=ca_pem, max_bytes=max_bytes)
                location = response.headers.get("Location")
                if response.status_code not in REDIRECT_CODES or not location:
                    return response
                url = urljoin(url, location)
                if response.status_code == 303:
                    method, data = "GET", None
    except http_caps.TooSlow:
        raise TooSlow(host) from None
    raise ProtocolFailed("too many redirects")


def _send(method, url, *, host, address, timeout, headers, data, ca_pem, max_bytes) -> requests.Response:
    session = pinned_session(host, address, ca_pem=ca_pem, max_retries=0)
    try:
        response = session.request(method, url, headers=headers, data=data, timeout=timeout,
                                   allow_redirects=False, stream=True)
        http_caps.read_body(response, max_bytes=max_bytes)
        return response
    except http_caps.TooLarge:
        raise TooLarge(host) from None
    except requests.exceptions.SSLError:
        raise TlsFailed(host) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
        raise Unreachable(host) from None
    except requests.exceptions.RequestException:
        raise ProtocolFailed(host) from None
    finally:
        session.close()
