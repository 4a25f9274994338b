"""The inside end of a NETNS vnic's veth: its MAC, MTU, addresses and state.

Owns :func:`configure_peer`, the only work the data plane does inside a
vnic's network namespace (through :func:`~butterfly.dataplane.netns.run_in_netns`,
with a netlink socket of that namespace), all or nothing, with its undo.
"""

from typing import Any

from butterfly.dataplane.journal import Journal, step
from butterfly.dataplane.naming import tap_name
from butterfly.dataplane.netlink import Netlink
from butterfly.dataplane.netns import run_in_netns
from butterfly.dataplane.offloads import turn_off_offloads
from butterfly.dataplane.settings import what
from butterfly.errors import DataplaneError
from butterfly.model import Vnic
from butterfly.model.addresses import ip_version

__all__ = ["NETNS_PREFIX_V4", "NETNS_PREFIX_V6", "configure_peer"]

NETNS_PREFIX_V4 = 24
"""Prefix length given to a NETNS vnic's IPv4 addresses (the model has none)."""
NETNS_PREFIX_V6 = 64

_PeerOp = tuple[str, Any, Any]
"""(operation, value to apply, value to restore) on the inside end of a veth."""


def configure_peer(
    j: Journal | None, vnic: Vnic, previous: Vnic | None, *, mtu: int, offload: bool
) -> None:
    """The inside end of a NETNS vnic: its MAC, MTU, addresses, up.

    Addresses of ``previous`` that ``vnic`` no longer has are removed;
    addresses the namespace's owner added are left alone. All or nothing.
    """
    name = tap_name(vnic.id)
    label = what(vnic)
    wanted = {_prefixed(ip) for ip in vnic.ips}
    stale = {_prefixed(ip) for ip in previous.ips} - wanted if previous else set()

    def inside() -> tuple[int, list[_PeerOp]]:
        with Netlink() as netlink:
            link = netlink.link(name)
            if link is None:
                raise DataplaneError(f"{label}: interface {name} is missing in {vnic.netns}")
            present = {(a.address, a.prefixlen) for a in netlink.addresses(link.index)}
            todo: list[_PeerOp] = []
            if link.mac != vnic.mac.lower() or link.mtu != mtu:
                todo.append(("set", (vnic.mac, mtu), (link.mac, link.mtu)))
            todo += [("del", a, a) for a in sorted(stale & present)]
            todo += [("add", a, a) for a in sorted(wanted - present)]
            if not link.up:
                todo.append(("up", True, False))
            done: list[_PeerOp] = []
            try:
                for op in todo:
                    _peer_op(netlink, link.index, op, forward=True)
                    done.append(op)
                if not offload:
                    turn_off_offloads(name)
            except DataplaneError:
                _revert_peer(netlink, link.index, done)
                raise
            return link.index, done

    def configure() -> None:
        index, done = run_in_netns(vnic.netns, label, inside)
        if j is not None and done:

            def undo() -> None:
                with Netlink() as netlink:
                    _revert_peer(netlink, index, done)

            j.on_rollback(
                f"configure {name} in {vnic.netns}",
                lambda: run_in_netns(vnic.netns, label, undo),
            )

    step(j, f"configure {name} in {vnic.netns}", configure)


def _prefixed(ip: str) -> tuple[str, int]:
    return ip, NETNS_PREFIX_V6 if ip_version(ip) == 6 else NETNS_PREFIX_V4


def _peer_op(netlink: Netlink, index: int, op: _PeerOp, *, forward: bool) -> None:
    kind, value, previous = op
    target = value if forward else previous
    if kind == "set":
        mac, mtu = target
        netlink.set_link(index, mac=mac, mtu=mtu)
    elif kind == "up":
        netlink.set_link(index, up=target)
    elif (kind == "add") == forward:
        netlink.add_address(index, *target)
    else:
        netlink.delete_address(index, *target)


def _revert_peer(netlink: Netlink, index: int, done: list[_PeerOp]) -> None:
    for op in reversed(done):
        _peer_op(netlink, index, op, forward=False)
