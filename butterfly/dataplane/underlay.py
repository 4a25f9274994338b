"""The underlay: the interface and address VXLAN runs on, and VXLAN's parameters.

Owns the choice of the underlay at start-up (the interface holding the
daemon's ``--ip``; else the interface named by ``--dpdk-args``' ``iface=``,
as the original's DPDK port was; else the one with the default route), the
multicast group
of each VNI, and the MTU arithmetic. The group is the original's:
230.x.y.z, where x.y.z are the VNI's three bytes; an IPv6 underlay embeds
that same 32-bit group in the site-local multicast prefix: ff05::e6xx:yyzz.
"""

import ipaddress
from dataclasses import dataclass

from butterfly.dataplane.netlink import Address, Link, Netlink
from butterfly.errors import ConfigError
from butterfly.model.addresses import ip_version

__all__ = ["VXLAN_OVERHEAD", "Underlay", "find_underlay", "flood_group"]

VXLAN_OVERHEAD = {4: 50, 6: 70}
"""Outer Ethernet is not counted: IP (20/40) + UDP (8) + VXLAN (8) + inner Ethernet (14)."""


@dataclass(frozen=True, slots=True)
class Underlay:
    ifname: str
    index: int
    address: str
    mtu: int

    @property
    def version(self) -> int:
        return ip_version(self.address)

    @property
    def vxlan_mtu(self) -> int:
        """The largest inner frame payload a VXLAN device on this underlay can carry."""
        return self.mtu - VXLAN_OVERHEAD[self.version]


def flood_group(vni: int, version: int) -> str:
    """The multicast group flooding ``vni``'s broadcast and unknown unicast."""
    group = (230 << 24) | vni
    if version == 6:
        return str(ipaddress.IPv6Address((0xFF05 << 112) | group))
    return str(ipaddress.IPv4Address(group))


def find_underlay(netlink: Netlink, ip: str | None, interface: str | None = None) -> Underlay:
    """The interface holding ``ip`` (``interface`` if several do); when ``ip`` is
    None, ``interface`` and its address; when both are None, the default
    route's interface and address.

    Raises ConfigError naming the option when no interface fits.
    """
    addresses = netlink.addresses()
    if ip is not None:
        wanted = ipaddress.ip_address(ip)
        holders = [
            link
            for address in addresses
            if ipaddress.ip_address(address.address) == wanted
            and (link := netlink.link_by_index(address.index)) is not None
        ]
        if not holders:
            raise ConfigError(f"ip {ip}: no interface holds this address (option --ip)")
        named = [link for link in holders if link.name == interface]
        return _underlay((named or holders)[0], str(wanted))
    if interface is not None:
        return _named_underlay(interface, netlink.link(interface), addresses)
    for family in (4, 6):
        route = netlink.default_route(family)
        link = netlink.link_by_index(route.oif) if route is not None else None
        if route is None or link is None:
            continue
        if route.prefsrc:
            return _underlay(link, route.prefsrc)
        for address in addresses:
            if (
                address.index == route.oif
                and address.family == family
                and not ipaddress.ip_address(address.address).is_link_local
            ):
                return _underlay(link, address.address)
        raise ConfigError(
            f"ip: the default route's interface {link.name} has no address; give one with --ip"
        )
    raise ConfigError("ip: no --ip given and no default route to find the underlay by")


def _named_underlay(interface: str, link: Link | None, addresses: list[Address]) -> Underlay:
    """``interface``'s first global address, IPv4 first (the original's underlay was IPv4)."""
    if link is None:
        raise ConfigError(f"dpdk-args: iface {interface}: no such interface")
    usable = [
        address.address
        for address in addresses
        if address.index == link.index and not ipaddress.ip_address(address.address).is_link_local
    ]
    usable.sort(key=ip_version)
    if not usable:
        raise ConfigError(f"dpdk-args: iface {interface} has no address; give one with --ip")
    return _underlay(link, usable[0])


def _underlay(link: Link, address: str) -> Underlay:
    return Underlay(ifname=link.name, index=link.index, address=address, mtu=link.mtu)
