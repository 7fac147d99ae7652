"""Egress guard for connections to hosts that users supply.

Resolve once, refuse every address that is not globally routable (loopback,
private, link-local, CGNAT, unique-local, multicast, reserved and the IPv6
forms that embed such an IPv4 address), and hand back the checked address so
the caller connects to exactly that one. EGRESS_ALLOW_NETWORKS opens chosen
networks for development, tests and on-premises deployments.
"""

import ipaddress
import socket

from django.conf import settings

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Refused even where a Python version's is_global would let them pass.
_ALWAYS_REFUSED = [ipaddress.ip_network(net) for net in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "240.0.0.0/4",
    "64:ff9b:1::/48", "2001::/23", "2001:db8::/32", "fc00::/7", "fe80::/10",
)]


class EgressRefused(Exception):
    def __init__(self, host: str):
        super().__init__(f"egress policy refused {host}")
        self.host = host


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


def resolve_checked(host: str, port: int) -> str:
    """Return one address of host that the policy allows, or raise.

    Every address the name resolves to must pass: a name that mixes a public
    and a private address is refused whole (DNS rebinding tricks).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise EgressRefused(host) from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses or not all(is_allowed(address) for address in addresses):
        raise EgressRefused(host)
    return addresses[0]
