"""FRR's configuration for a host of an EVPN underlay, from butterflyd's ini file.

Owns the text only: ``butterflyd -c FILE --frr-config PATH`` writes it where
FRR reads it (``/etc/frr/frr.conf`` in Debian's integrated setup, or the
file given to ``bgpd -f``). It configures ``bgpd`` alone (zebra needs
nothing for EVPN): one iBGP ``l2vpn evpn`` peer group towards the
``neighbors`` (the route reflectors, or every other host) and, on a route
reflector, a second one accepting sessions from the ``route-reflector-clients``
prefixes and reflecting to them. ``advertise-all-vni`` makes FRR advertise
every VXLAN device butterflyd makes. ``frr defaults datacenter`` gives the
fast timers (3 s keepalives, no advertisement delay) a switch needs: a
vnic deleted or moved is withdrawn everywhere within a second.
"""

from butterfly.daemon.config import EvpnConfig
from butterfly.errors import ConfigError
from butterfly.model.addresses import ip_version

__all__ = ["frr_config"]

PEERS = "butterfly"
"""The peer group of the configured neighbours."""
CLIENTS = "butterfly-clients"
"""The peer group of the route reflector's clients."""


def frr_config(evpn: EvpnConfig, *, underlay_ip: str | None, source: str) -> str:
    """bgpd's configuration; ``underlay_ip`` is the router id when ``[evpn]``
    gives none. Raises ConfigError naming the missing key."""
    if evpn.asn is None:
        raise ConfigError(f"{source}: [evpn] asn is needed to configure FRR")
    router_id = evpn.router_id or underlay_ip
    if router_id is None or ip_version(router_id) == 6:
        raise ConfigError(
            f"{source}: [evpn] router-id is needed (an IPv4 address; the underlay's is "
            f"{underlay_ip or 'unknown'})"
        )
    if not evpn.neighbors and not evpn.reflect_for:
        raise ConfigError(
            f"{source}: [evpn] needs neighbors (route reflectors or other hosts) "
            "or route-reflector-clients (this host reflects)"
        )
    lines = [
        f"! BGP EVPN of butterflyd, written by butterflyd --frr-config from {source}",
        "frr defaults datacenter",
        "!",
        f"router bgp {evpn.asn}",
        f" bgp router-id {router_id}",
        " no bgp default ipv4-unicast",
    ]
    if evpn.reflect_for:
        lines.append(f" bgp cluster-id {router_id}")
    if evpn.neighbors:
        lines += [f" neighbor {PEERS} peer-group", f" neighbor {PEERS} remote-as internal"]
        lines += [f" neighbor {peer} peer-group {PEERS}" for peer in evpn.neighbors]
    if evpn.reflect_for:
        lines += [f" neighbor {CLIENTS} peer-group", f" neighbor {CLIENTS} remote-as internal"]
        lines += [f" bgp listen range {prefix} peer-group {CLIENTS}" for prefix in evpn.reflect_for]
    lines += [" !", " address-family l2vpn evpn"]
    if evpn.neighbors:
        lines.append(f"  neighbor {PEERS} activate")
    if evpn.reflect_for:
        lines += [f"  neighbor {CLIENTS} activate", f"  neighbor {CLIENTS} route-reflector-client"]
    lines += ["  advertise-all-vni", " exit-address-family", "exit", ""]
    return "\n".join(lines)
