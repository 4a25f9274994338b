"""In-memory stand-ins for the kernel interfaces of the data plane (no root, no kernel).

They implement the protocols of :mod:`butterfly.dataplane.kernel_io` the way
the kernel behaves as far as the data plane can tell: links live in a dict
by name (a new one gets the next ifindex; deleting a bridge detaches its
ports), and every change is written to one shared ``events`` list, nft's
transactions too, so a test reads what was changed and in which order.
``fail_on`` makes the next change whose event starts with it fail, as the
kernel would refuse it (nothing changes, DataplaneError).

What they cannot stand for (a veth's namespace, a port deleted by the
deletion thread, multicast sysctls, tcpdump) is left to the functional tests.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from butterfly.dataplane.guard import ANCHORS, GuardKind
from butterfly.dataplane.kernel_io import KernelIo
from butterfly.dataplane.netlink import BRIDGE_OPTIONS, Address, Link, Route
from butterfly.dataplane.nft import Json
from butterfly.errors import DataplaneError
from butterfly.model.sessions import Session

UNDERLAY = Link(
    index=2,
    name="eth0",
    kind="",
    alias=None,
    master=None,
    mtu=1500,
    up=True,
    mac="52:54:00:ff:00:01",
    link_netnsid=None,
)
UNDERLAY_IP = "192.0.2.1"


class Refusing:
    """The shared event log, and the one failure to come."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.fail_on: str | None = None

    def record(self, event: str) -> None:
        if self.fail_on is not None and event.startswith(self.fail_on):
            self.fail_on = None
            raise DataplaneError(f"the kernel refused: {event}")
        self.events.append(event)


class MemoryNftables:
    """libnftables as the data plane uses it: no tables at first, every
    transaction recorded (in ``log``'s events as ``nft`` too)."""

    def __init__(self, log: Refusing | None = None) -> None:
        self._log = log or Refusing()
        self.transactions: list[list[Json]] = []
        self.texts: list[str] = []
        self.fail_next = False
        self.reads: list[Json] = []
        self.closed = False

    def apply(self, commands: Sequence[Json]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise DataplaneError("nftables refused the change")
        self._log.record("nft")
        self.transactions.append(list(commands))

    def run_text(self, commands: str) -> None:
        self._log.record("nft bootstrap")
        self.texts.append(commands)

    def list(self, what: Json) -> list[Json] | None:
        self.reads.append(what)
        return None

    def close(self) -> None:
        self.closed = True


class FakeNetlink:
    """Links, forwarding entries, neighbours and guards of one namespace, in dicts."""

    def __init__(self, log: Refusing) -> None:
        self._log = log
        self.by_name: dict[str, Link] = {UNDERLAY.name: UNDERLAY}
        self.bound: dict[int, tuple[int, int]] = {}
        """Link index -> the tc blocks its clsact qdisc is bound to."""
        self.blocks: dict[int, dict[int, str]] = {}
        """Block -> priority -> the filter's name."""
        self.flooding: dict[int, set[str]] = {}
        self.macs: dict[int, dict[str, bool]] = {}
        self.neighbours: dict[int, dict[str, str]] = {}
        self.frr_remote: set[tuple[int, str]] = set()
        """(bridge index, MAC) that FRR installed (EVPN: another host has it)."""
        self._next_index = 10
        self.closed = False

    # test helpers

    def names(self) -> set[str]:
        """The links of vnics and VNIs (not the underlay, nor the guard's anchors)."""
        return set(self.by_name) - {UNDERLAY.name} - ANCHORS

    def link_names(self) -> set[str]:
        return set(self.by_name)

    def index(self, name: str) -> int | None:
        link = self.by_name.get(name)
        return link.index if link is not None else None

    def put(self, link: Link) -> None:
        """A change made behind the data plane's back (not an event)."""
        for name, old in list(self.by_name.items()):
            if old.index == link.index:
                del self.by_name[name]
        self.by_name[link.name] = link

    def _by_index(self, index: int) -> Link:
        for link in self.by_name.values():
            if link.index == index:
                return link
        raise DataplaneError(f"no link {index}")

    def _name_of(self, index: int | None) -> str:
        return "-" if index is None else self._by_index(index).name

    def _add(
        self, name: str, kind: str, event: str, *, mtu: int, alias: str, **fields: Any
    ) -> None:
        if name in self.by_name:
            raise DataplaneError(f"{name} exists")
        self._log.record(event)
        self._next_index += 1
        self.by_name[name] = Link(
            index=self._next_index,
            name=name,
            kind=kind,
            alias=alias,
            master=None,
            mtu=mtu,
            up=False,
            mac=f"52:54:00:00:ff:{self._next_index:02x}",
            link_netnsid=None,
            **fields,
        )

    # reading

    def link(self, name: str, *, fresh: bool = False) -> Link | None:
        return self.by_name.get(name)

    def links(self) -> list[Link]:
        return list(self.by_name.values())

    def link_by_index(self, index: int) -> Link | None:
        return next((link for link in self.by_name.values() if link.index == index), None)

    def addresses(self, index: int | None = None) -> list[Address]:
        return [Address(UNDERLAY_IP, 24, UNDERLAY.index, 4)]

    def default_route(self, family: int) -> Route | None:
        return Route(UNDERLAY.index, None) if family == 4 else None

    def flood_peers(self) -> dict[int, set[str]]:
        return {index: set(peers) for index, peers in self.flooding.items()}

    def bridge_entries(self, index: int) -> dict[str, bool]:
        return dict(self.macs.get(index, {}))

    def remote_by_frr(self, bridge: int, mac: str) -> bool:
        return (bridge, mac) in self.frr_remote

    def static_neighbours(self, index: int) -> dict[str, str]:
        return dict(self.neighbours.get(index, {}))

    def netnsid(self, fd: int) -> int | None:
        return None

    def guard_block(self, index: int) -> int | None:
        blocks = self.bound.get(index)
        return blocks[1] if blocks is not None else None

    def block_filters(self, block: int) -> dict[int, str]:
        return dict(self.blocks.get(block, {}))

    # changing

    def add_bridge(self, name: str, *, mtu: int, alias: str, ipv6: bool = False) -> None:
        self._add(name, "bridge", f"add bridge {name}", mtu=mtu, alias=alias)
        self.by_name[name] = replace(self.by_name[name], info=dict(BRIDGE_OPTIONS))

    def add_vxlan(
        self,
        name: str,
        *,
        vni: int,
        local: str,
        group: str | None,
        underlay_index: int,
        port: int,
        mtu: int,
        alias: str,
        learning: bool = True,
    ) -> None:
        info = {
            "IFLA_VXLAN_ID": vni,
            "IFLA_VXLAN_LOCAL": local,
            "IFLA_VXLAN_GROUP": group,
            "IFLA_VXLAN_LINK": underlay_index,
            "IFLA_VXLAN_PORT": port,
            "IFLA_VXLAN_LEARNING": int(learning),
        }
        self._add(name, "vxlan", f"add vxlan {name}", mtu=mtu, alias=alias, info=info)

    def add_tap(self, name: str, *, mtu: int, alias: str, queue: int | None = None) -> None:
        self._add(name, "tun", f"add tap {name}", mtu=mtu, alias=alias, queue=queue or 1000)

    def add_veth(
        self, name: str, *, mtu: int, alias: str, peer_netns_fd: int, peer_mac: str
    ) -> None:
        self._add(name, "veth", f"add veth {name}", mtu=mtu, alias=alias)

    def set_link(
        self,
        index: int,
        *,
        master: int | None = None,
        nomaster: bool = False,
        mtu: int | None = None,
        up: bool | None = None,
        mac: str | None = None,
        alias: str | None = None,
        queue: int | None = None,
        advice: Mapping[int, str] | None = None,
    ) -> None:
        link = self._by_index(index)
        changes: dict[str, Any] = {}
        if master is not None or nomaster:
            changes["master"] = master
        if mtu is not None:
            changes["mtu"] = mtu
        if up is not None:
            changes["up"] = up
        if mac is not None:
            changes["mac"] = mac
        if alias is not None:
            changes["alias"] = alias
        if queue is not None:
            changes["queue"] = queue
        shown = {k: self._name_of(v) if k == "master" else v for k, v in changes.items()}
        self._log.record(
            f"set {link.name} " + " ".join(f"{k}={v}" for k, v in sorted(shown.items()))
        )
        self.put(replace(link, **changes))

    def set_bridge_options(self, index: int) -> None:
        link = self._by_index(index)
        self._log.record(f"configure bridge {link.name}")
        self.put(replace(link, info=dict(BRIDGE_OPTIONS)))

    def set_bridge_port(
        self,
        index: int,
        *,
        learning: bool,
        unicast_flood: bool,
        locked: bool,
        neigh_suppress: bool = False,
    ) -> None:
        link = self._by_index(index)
        port = {
            "IFLA_BRPORT_LEARNING": int(learning),
            "IFLA_BRPORT_UNICAST_FLOOD": int(unicast_flood),
            "IFLA_BRPORT_LOCKED": int(locked),
            "IFLA_BRPORT_NEIGH_SUPPRESS": int(neigh_suppress),
        }
        self._log.record(f"set port {link.name} locked={locked}")
        self.put(replace(link, port=port))

    def rename_link(self, index: int, name: str, *, alias: str | None = None) -> None:
        link = self._by_index(index)
        if name in self.by_name:
            raise DataplaneError(f"{name} exists")
        if link.up:
            raise DataplaneError(f"renaming {link.name}: it is up")
        self._log.record(f"rename {link.name} {name}")
        self.put(replace(link, name=name, alias=link.alias if alias is None else alias))

    def delete_link(self, index: int) -> None:
        link = self._by_index(index)
        self._log.record(f"delete {link.name}")
        del self.by_name[link.name]
        for other in list(self.by_name.values()):
            if other.master == index:
                self.put(replace(other, master=None))
        for table in (
            self.bound,
            self.flooding,
            self.macs,
            self.neighbours,
        ):
            table.pop(index, None)

    def bind_blocks(self, index: int, blocks: tuple[int, int]) -> None:
        kind = next((kind.value for kind in GuardKind if kind.blocks == blocks), blocks)
        self._log.record(f"guard {self._name_of(index)} {kind}")
        self.bound[index] = blocks

    def unbind_blocks(self, index: int) -> None:
        self._log.record(f"no guard {self._name_of(index)}")
        self.bound.pop(index, None)

    def set_block_filter(self, block: int, prio: int, fd: int, name: str) -> None:
        self._log.record(f"block {block:x} {prio} {name}")
        self.blocks.setdefault(block, {})[prio] = name

    def delete_block_filter(self, block: int, prio: int) -> None:
        self._log.record(f"block {block:x} {prio} -")
        self.blocks.get(block, {}).pop(prio, None)

    def fdb_append(self, index: int, dst: str) -> None:
        self._log.record(f"flood {self._name_of(index)} {dst}")
        self.flooding.setdefault(index, set()).add(dst)

    def fdb_delete(self, index: int, dst: str) -> None:
        self._log.record(f"unflood {self._name_of(index)} {dst}")
        self.flooding.get(index, set()).discard(dst)

    def pin_mac(self, index: int, mac: str) -> None:
        self._log.record(f"pin {self._name_of(index)} {mac}")
        self.macs.setdefault(index, {})[mac] = True

    def forget_mac(self, index: int, mac: str) -> None:
        self._log.record(f"unpin {self._name_of(index)} {mac}")
        self.macs.get(index, {}).pop(mac, None)

    def set_neighbour(self, index: int, address: str, mac: str) -> None:
        self._log.record(f"neighbour {self._name_of(index)} {address} {mac}")
        self.neighbours.setdefault(index, {})[address] = mac

    def delete_neighbour(self, index: int, address: str) -> None:
        self._log.record(f"no neighbour {self._name_of(index)} {address}")
        self.neighbours.get(index, {}).pop(address, None)

    def forget(self, name: str) -> None:
        """A cache of the real one; nothing to forget here."""

    # the data plane's own

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        yield

    def take_touched(self) -> set[int]:
        return set()

    def disable_ipv6(self, name: str) -> None:
        self._log.record(f"ipv6 off {name}")

    def close(self) -> None:
        self.closed = True


class FakeGuards:
    """Descriptors standing for the two loaded guard programs."""

    def __init__(self) -> None:
        self.closed = False

    def fd(self, kind: GuardKind) -> int:
        return 1000 + list(GuardKind).index(kind)

    def sender_fd(self) -> int:
        return 999

    def close(self) -> None:
        self.closed = True


class FakeConntrack:
    """Zones as lists of sessions."""

    def __init__(self) -> None:
        self.zones: dict[int, list[Session]] = {}
        self.closed = False

    def sessions(self, zone: int, ips: Sequence[str]) -> tuple[Session, ...]:
        return tuple(s for s in self.zones.get(zone, []) if s.involves(set(ips)))

    def load(self, zone: int, sessions: Sequence[Session]) -> int:
        self.zones.setdefault(zone, []).extend(sessions)
        return len(sessions)

    def close(self) -> None:
        self.closed = True


class FakeKernel:
    """One namespace's worth of fakes sharing one event log."""

    def __init__(self) -> None:
        self.log = Refusing()
        self.netlink = FakeNetlink(self.log)
        self.nft = MemoryNftables(self.log)
        self.guards = FakeGuards()
        self.conntrack = FakeConntrack()

    @property
    def events(self) -> list[str]:
        return self.log.events

    def io(self) -> KernelIo:
        return KernelIo(
            netlink=self.netlink, nft=self.nft, guards=self.guards, conntrack=self.conntrack
        )

    def closed(self) -> bool:
        return all(part.closed for part in (self.netlink, self.nft, self.guards, self.conntrack))
