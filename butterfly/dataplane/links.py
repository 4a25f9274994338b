"""What every link butterfly makes goes through: claiming, fixing, guarding, renaming back.

Owns :class:`Links`, the operations shared by a VNI's devices (:mod:`.vni`)
and a vnic's port (:mod:`.ports`): refusing a link of that name that is not
butterfly's, setting MTU, master and up state where they differ, the port
guard (:mod:`.guard`, and on ports without filtering its sender mark)
before a link joins its bridge, the fast path's program (:mod:`.fastpath`)
on a port's ingress after it, a bridge port's forwarding flags, and giving
back their names to links another program renamed. Each change is a
journaled step with its undo.
"""

from collections.abc import Iterable, Mapping
from functools import partial
from typing import NamedTuple

from butterfly.dataplane.fastpath import ADMISSION_FILTER
from butterfly.dataplane.fastpath import FILTER_NAME as FAST_PATH_FILTER
from butterfly.dataplane.guard import SENDER_MARK, GuardKind
from butterfly.dataplane.journal import Journal, best_effort, step
from butterfly.dataplane.kernel_io import GuardApi, LinksNetlink
from butterfly.dataplane.naming import is_butterfly_link, name_from_alias
from butterfly.dataplane.netlink import Link
from butterfly.errors import DataplaneError

__all__ = ["Links", "PortFlags"]


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

    def ensure_guard(
        self, j: Journal | None, link: Link, kind: GuardKind, *, fresh: bool = False
    ) -> None:
        """The port guard ``kind`` on ``link``'s egress, and the sender mark on
        its ingress exactly when ``kind`` wants it, before the link joins its
        bridge (``fresh``: just created, so it has none and is not asked)."""
        current = None if fresh else self._netlink.guard(link.index)
        if current != kind.value:
            previous = next((k for k in GuardKind if k.value == current), None)
            undo = None
            if previous is not None:
                undo = partial(
                    self._netlink.set_guard, link.index, self._guards.fd(previous), previous.value
                )
            step(
                j,
                f"guard {link.name}",
                partial(self._netlink.set_guard, link.index, self._guards.fd(kind), kind.value),
                undo,
            )
        marked = not fresh and self._netlink.guard(link.index, ingress=True) == SENDER_MARK
        mark = partial(
            self._netlink.set_guard, link.index, self._guards.sender_fd(), SENDER_MARK, ingress=True
        )
        unmark = partial(self._netlink.remove_guard, link.index, ingress=True)
        if kind.marks_senders and not marked:
            step(j, f"mark what enters {link.name} as unfiltered", mark, unmark)
        elif marked and not kind.marks_senders:
            step(j, f"stop marking what enters {link.name} as unfiltered", unmark, mark)

    def ensure_fast_path(self, j: Journal | None, link: Link) -> None:
        """The fast path's program on a port's ingress (on every port: its maps
        say which vnics it serves); with the fast path off, a reconcile
        (``j`` None) removes one a previous daemon left."""
        if self._fast_path is not None:
            ingress, egress = self._fast_path
            attach = partial(
                self._netlink.set_ingress_program, link.index, ingress, FAST_PATH_FILTER
            )
            step(j, f"fast path on {link.name}", attach)
            admit = partial(self._netlink.set_egress_program, link.index, egress, ADMISSION_FILTER)
            step(j, f"fast path admissions on {link.name}", admit)
        elif j is None:
            self._netlink.remove_ingress_program(link.index)
            self._netlink.remove_egress_program(link.index)

    def fix(
        self,
        j: Journal | None,
        link: Link,
        *,
        master: int | None,
        mtu: int,
        advice: Mapping[int, str] | None = None,
    ) -> None:
        """Set the MTU, master and up state of ``link`` where they differ
        (``advice``: the remedy for errnos of setting it up)."""
        if link.mtu != mtu:
            step(
                j,
                f"set mtu of {link.name}",
                lambda: self._netlink.set_link(link.index, mtu=mtu),
                lambda: self._netlink.set_link(link.index, mtu=link.mtu),
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
            changed = self._netlink.link(name)
            if wanted.locked and (changed is None or not changed.port.get("IFLA_BRPORT_LOCKED")):
                self._netlink.set_bridge_port(index, **flags._asdict())
                raise DataplaneError(
                    f"{what}: this kernel cannot lock bridge port {name} to the "
                    "vnic's MAC (Linux 5.18 or later is needed for MAC anti-spoofing)"
                )

        step(
            j,
            f"set {name}'s learning, flooding, locking and neighbour suppression",
            lock,
            partial(self._netlink.set_bridge_port, index, **flags._asdict()),
        )
        return index
