"""What every link butterfly makes goes through: claiming, fixing, guarding, renaming back.

Owns :class:`Links`, the operations shared by a VNI's devices (:mod:`.vni`)
and a vnic's port (:mod:`.ports`): refusing a link of that name that is not
butterfly's, setting MTU, master and up state where they differ, binding
a port to the shared tc blocks of its guard (:mod:`.guard`, which also
hold the fast path's programs, :mod:`.fastpath`) before it joins its
bridge, the blocks' programs themselves, a bridge port's forwarding flags,
and giving back their names to links another program renamed. Each change
of a request is a journaled step with its undo.
"""

from collections.abc import Iterable, Mapping
from functools import partial
from typing import NamedTuple

from butterfly.dataplane.fastpath import ADMISSION_FILTER
from butterfly.dataplane.fastpath import FILTER_NAME as FAST_PATH_FILTER
from butterfly.dataplane.guard import (
    ADMISSION_PRIO,
    FAST_PATH_PRIO,
    GUARD_PRIO,
    SENDER_MARK,
    SENDER_PRIO,
    GuardKind,
)
from butterfly.dataplane.journal import Journal, best_effort, step
from butterfly.dataplane.kernel_io import GuardApi, LinksNetlink
from butterfly.dataplane.naming import anchor_alias, is_butterfly_link, name_from_alias
from butterfly.dataplane.netlink import Link
from butterfly.errors import DataplaneError

__all__ = ["Links", "PortFlags"]

_ANCHOR_MTU = 1500
"""Any: an anchor never goes up."""


class PortFlags(NamedTuple):
    """A port's forwarding behaviour in its bridge."""

    learning: bool
    unicast_flood: bool
    locked: bool
    neigh_suppress: bool


class Links:
    """Butterfly's links in the namespace ``netlink`` talks to."""

    def __init__(
        self,
        netlink: LinksNetlink,
        guards: GuardApi,
        *,
        fast_path: tuple[int, int] | None = None,
    ) -> None:
        self._netlink = netlink
        self._guards = guards
        self._fast_path = fast_path
        """The eBPF fast path's programs (:mod:`.fastpath`: ingress, egress), None
        when it is off."""
        self._blocks_checked = False
        self._locking_seen = False
        """A port was seen locked: the kernel has the flag (older ones ignore it)."""

    def use_fast_path(self, fast_path: tuple[int, int] | None) -> None:
        """The fast path's programs, once loaded after the daemon began serving
        (None: the kernel refused them; a reconcile then removes old ones)."""
        self._fast_path = fast_path

    def owned(self) -> dict[str, Link]:
        return {
            link.name: link
            for link in self._netlink.links()
            if is_butterfly_link(link.name, link.alias)
        }

    def rename_strays(self, problems: list[str], names: Iterable[str] | None = None) -> None:
        """Links another program renamed get their names back (their alias still
        says whose they are), so a guest keeps its very interface. ``names``:
        look only at these (None: every link)."""
        if names is None:
            links = self._netlink.links()
        else:
            links = [link for name in names if (link := self._netlink.link(name)) is not None]
        for link in links:
            if is_butterfly_link(link.name, link.alias):
                continue
            name = name_from_alias(link.alias, link.kind)
            if name is None or self._netlink.link(name) is not None:
                continue
            best_effort(problems, f"link {link.name}", partial(self._rename, link, name))

    def _rename(self, link: Link, name: str) -> None:
        """Only a link that is down can be renamed; reconcile sets it up again."""
        if link.up:
            self._netlink.set_link(link.index, up=False)
        self._netlink.rename_link(link.index, name)

    def own(self, name: str, what: str) -> Link | None:
        """The link ``name`` if it exists; refuses one that is not butterfly's."""
        link = self._netlink.link(name)
        if (
            link is not None
            and link.alias is not None
            and not is_butterfly_link(link.name, link.alias)
        ):
            raise DataplaneError(f"{what}: interface {name} exists and is not butterfly's")
        return link

    def delete(self, name: str) -> None:
        link = self._netlink.link(name)
        if link is not None:
            self._netlink.delete_link(link.index)

    def ensure_blocks(self, *, fast_path: bool = True, refresh: bool = False) -> list[str]:
        """The shared tc blocks of the port guard (:mod:`.guard`) with exactly
        their programs, and the anchors that keep them: before the first port
        is bound, in every reconcile and repair (a few messages), never per
        port. ``fast_path`` False: leave the fast path's programs as they are
        (before start-up has loaded it). ``refresh``: put every program back
        even where the names match (a reconcile: a new daemon may have loaded
        a newer build). Returns the anchors it made."""
        self._blocks_checked = True
        made = []
        for kind in GuardKind:
            anchor = self.own(kind.anchor, "port guard")
            if anchor is None:
                alias = anchor_alias(kind.name.lower())
                self._netlink.add_tap(kind.anchor, mtu=_ANCHOR_MTU, alias=alias)
                made.append(kind.anchor)
                anchor = self._netlink.link(kind.anchor, fresh=True)
                if anchor is None:
                    raise DataplaneError(f"port guard: tap {kind.anchor} vanished")
            if self._netlink.guard_block(anchor.index) != kind.blocks.egress:
                self._netlink.bind_blocks(anchor.index, kind.blocks)
            for block, (programs, fast_prio) in self._programs(kind).items():
                present = self._netlink.block_filters(block)
                if not fast_path:
                    programs.pop(fast_prio, None)
                    present.pop(fast_prio, None)
                for prio in present.keys() - programs.keys():
                    self._netlink.delete_block_filter(block, prio)
                for prio, (fd, name) in sorted(programs.items()):
                    if refresh or present.get(prio) != name:
                        self._netlink.set_block_filter(block, prio, fd, name)
        return made

    def _unmake(self, anchors: list[str]) -> None:
        """Undo the first :meth:`ensure_blocks` of a request that failed: the
        anchors it made go (their blocks with them, no port being bound)."""
        self._blocks_checked = False
        for name in anchors:
            self.delete(name)

    def _programs(self, kind: GuardKind) -> dict[int, tuple[dict[int, tuple[int, str]], int]]:
        """What each block of ``kind`` holds (priority -> program and filter
        name), and the fast path's priority there."""
        ingress: dict[int, tuple[int, str]] = {}
        if kind.marks_senders:
            ingress[SENDER_PRIO] = (self._guards.sender_fd(), SENDER_MARK)
        egress = {GUARD_PRIO: (self._guards.fd(kind), kind.value)}
        if self._fast_path is not None:
            ingress[FAST_PATH_PRIO] = (self._fast_path[0], FAST_PATH_FILTER)
            egress[ADMISSION_PRIO] = (self._fast_path[1], ADMISSION_FILTER)
        return {
            kind.blocks.ingress: (ingress, FAST_PATH_PRIO),
            kind.blocks.egress: (egress, ADMISSION_PRIO),
        }

    def ensure_guard(
        self, j: Journal | None, link: Link, kind: GuardKind, *, fresh: bool = False
    ) -> None:
        """``link`` bound to the blocks of guard ``kind`` (which hold the fast
        path's programs too), before it joins its bridge (``fresh``: just
        created, so it has none and is not asked)."""
        if not self._blocks_checked:
            made: list[str] = []
            step(
                j,
                "port guard blocks",
                lambda: made.extend(self.ensure_blocks(fast_path=False)),
                lambda: self._unmake(made),
            )
        bound = None if fresh else self._netlink.guard_block(link.index)
        if bound == kind.blocks.egress:
            return
        previous = next((k for k in GuardKind if k.blocks.egress == bound), None)
        undo = None
        if bound is None:
            undo = partial(self._netlink.unbind_blocks, link.index)
        elif previous is not None:
            undo = partial(self._netlink.bind_blocks, link.index, previous.blocks)
        bind = partial(self._netlink.bind_blocks, link.index, kind.blocks)
        step(j, f"guard {link.name} ({kind.value})", bind, undo)

    def fix(
        self,
        j: Journal | None,
        link: Link,
        *,
        master: int | None,
        mtu: int,
        queue: int | None = None,
        advice: Mapping[int, str] | None = None,
    ) -> None:
        """Set the MTU, transmit queue length (None: left as it is), master and
        up state of ``link`` where they differ (``advice``: the remedy for
        errnos of setting it up)."""
        if link.mtu != mtu:
            step(
                j,
                f"set mtu of {link.name}",
                lambda: self._netlink.set_link(link.index, mtu=mtu),
                lambda: self._netlink.set_link(link.index, mtu=link.mtu),
            )
        if queue is not None and link.queue != queue:
            step(
                j,
                f"set the queue length of {link.name}",
                lambda: self._netlink.set_link(link.index, queue=queue),
                lambda: self._netlink.set_link(link.index, queue=link.queue),
            )
        if master is not None and link.master != master:
            step(
                j,
                f"attach {link.name}",
                lambda: self._netlink.set_link(link.index, master=master),
                lambda: self._netlink.set_link(
                    link.index, master=link.master, nomaster=link.master is None
                ),
            )
        if not link.up:
            step(
                j,
                f"set {link.name} up",
                lambda: self._netlink.set_link(link.index, up=True, advice=advice),
                lambda: self._netlink.set_link(link.index, up=False),
            )

    def fix_port_flags(
        self, j: Journal | None, name: str, wanted: PortFlags, *, what: str | None = None
    ) -> int:
        """Give bridge port ``name`` these flags where they differ; its ifindex."""
        what = what or f"interface {name}"
        link = self._netlink.link(name)
        if link is None:
            raise DataplaneError(f"{what}: interface {name} vanished")
        index = link.index
        flags = PortFlags(
            learning=bool(link.port.get("IFLA_BRPORT_LEARNING", 1)),
            unicast_flood=bool(link.port.get("IFLA_BRPORT_UNICAST_FLOOD", 1)),
            locked=bool(link.port.get("IFLA_BRPORT_LOCKED", 0)),
            neigh_suppress=bool(link.port.get("IFLA_BRPORT_NEIGH_SUPPRESS", 0)),
        )
        if flags == wanted:
            return index

        def lock() -> None:
            self._netlink.set_bridge_port(index, **wanted._asdict())
            if not wanted.locked or self._locking_seen:
                return
            changed = self._netlink.link(name)
            if changed is None or not changed.port.get("IFLA_BRPORT_LOCKED"):
                self._netlink.set_bridge_port(index, **flags._asdict())
                raise DataplaneError(
                    f"{what}: this kernel cannot lock bridge port {name} to the "
                    "vnic's MAC (Linux 5.18 or later is needed for MAC anti-spoofing)"
                )
            self._locking_seen = True

        step(
            j,
            f"set {name}'s learning, flooding, locking and neighbour suppression",
            lock,
            partial(self._netlink.set_bridge_port, index, **flags._asdict()),
        )
        return index
