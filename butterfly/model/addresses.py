"""MAC addresses, IP addresses and CIDRs: parsing and canonical forms.

Every address that enters butterfly goes through here once, so the rest of
the code only ever sees canonical strings (``2001:db8::1``, never
``2001:0db8:0000::1``) and can compare them as plain text.
"""

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "Cidr",
    "IpAddress",
    "canonical_ip",
    "ip_version",
    "is_mac",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def is_mac(text: str) -> bool:
    """Six pairs of hex digits separated by colons, as deployed clients send."""
    return _MAC.fullmatch(text) is not None


def parse_ip(text: str) -> IpAddress | None:
    """The address, or None when ``text`` is not a plain IPv4/IPv6 address."""
    if not text or text != text.strip() or "%" in text or "/" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def canonical_ip(text: str) -> str | None:
    """The canonical text of an IP address, or None when it does not parse."""
    address = parse_ip(text)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # RFC 5952 section 5, as inet_ntop and Python 3.13 write it (3.11: ::ffff:a00:1)
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def ip_version(text: str) -> int:
    """4 or 6 for a canonical address (the caller has already validated it)."""
    return 6 if ":" in text else 4


@dataclass(frozen=True, slots=True)
class Cidr:
    """A source prefix of a rule.

    The address keeps its host bits, as deployed daemons list it
    (``2001:db8::8001/8``); only its spelling is made canonical.
    """

    address: str
    mask_size: int

    @property
    def version(self) -> int:
        return ip_version(self.address)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The prefix with host bits cleared, as the kernel matches it."""
        return ipaddress.ip_network(f"{self.address}/{self.mask_size}", strict=False)

    def __str__(self) -> str:
        return f"{self.address}/{self.mask_size}"
