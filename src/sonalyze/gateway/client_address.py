"""The client address that rate limits and connection caps are keyed on (RFC 7239 §7.4 reasoning).

``X-Forwarded-For`` is believed only when the peer is one of ``TRUSTED_PROXIES`` (a comma-separated list
of CIDRs, e.g. the ingress' pod network): then the rightmost address that is not itself a trusted proxy is
the client. From any other peer the header is ignored, so a client cannot pick its own bucket.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network


def parse_networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """``"10.0.0.0/8, ::1"`` → networks; ValueError names a bad entry."""
    networks = []
    for entry in text.split(","):
        entry = entry.strip()
        if entry:
            try:
                networks.append(ip_network(entry, strict=False))
            except ValueError as exc:
                raise ValueError(f"TRUSTED_PROXIES entry {entry!r} is not an address or CIDR") from exc
    return tuple(networks)


class ClientAddresses:
    __slots__ = ("_trusted",)

    def __init__(self, trusted: tuple[IPv4Network | IPv6Network, ...]) -> None:
        self._trusted = trusted

    def _is_trusted(self, address: str) -> bool:
        try:
            parsed = ip_address(address.strip())
        except ValueError:
            return False
        return any(parsed in network for network in self._trusted)

    def resolve(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: ``peer`` unless it is a trusted proxy that says who it forwards for."""
        if not self._trusted or not forwarded_for or not self._is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                try:
                    return str(ip_address(hop))
                except ValueError:
                    return peer  # garbage where an address should be: the proxy's own address is the key
        return hops[0] if hops else peer
