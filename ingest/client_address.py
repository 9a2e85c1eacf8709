"""Who is on the other end of a webhook request, and whether an account accepts them.

The client address is the connection's peer. Only when the peer is one of the configured
trusted proxies (``OMNIROUTE_TRUSTED_PROXIES``) does ``X-Forwarded-For`` say more: its
hops are read from the right (the hop each proxy appended) and the first one that is
not itself a trusted proxy is the client. A client can write anything into the header's
left part, so nothing left of that hop is ever believed; from an untrusted peer the
header is ignored altogether. Pure functions: ingest/app.py feeds them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings as networks (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


def parse_address(value: str | None) -> IPAddress | None:
    """An IP address from a peer name or a header hop; None when it is not one."""
    if not value:
        return None
    text = value.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def within(address: IPAddress | None, nets: Sequence[IPNetwork]) -> bool:
    """True when ``address`` lies in one of ``nets`` (None lies nowhere)."""
    return address is not None and any(address in n for n in nets)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted_proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """The client's address: the peer, or — when the peer is a trusted proxy — the
    right-most ``X-Forwarded-For`` hop that is not a trusted proxy. ``forwarded_for`` is
    every ``X-Forwarded-For`` header value in order. None when the address that decides
    is not an IP address (a malformed hop after trusted ones: refuse, do not guess)."""
    address = parse_address(peer)
    if not within(address, trusted_proxies):
        return address
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        hop_address = parse_address(hop)
        if hop_address is None:
            return None
        if not within(hop_address, trusted_proxies):
            return hop_address
        address = hop_address
    return address  # every hop is a proxy of ours: the left-most one is the client


def allowed(allowed_networks: Sequence[IPNetwork], address: IPAddress | None) -> bool:
    """An account with no ``allowed_networks`` accepts any client; otherwise the client
    address must lie in one of them."""
    return not allowed_networks or within(address, allowed_networks)
