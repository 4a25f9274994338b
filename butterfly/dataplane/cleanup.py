"""Removing everything butterfly made in a network namespace (``butterflyd --cleanup``).

Owns :func:`cleanup`: butterfly's nftables tables (and the sniffing table),
its links, found by name and alias (:mod:`.naming`), and the traces a daemon
left running. It needs no model: everything is found by butterfly's names.
"""

import contextlib
import glob

from butterfly.dataplane.naming import TABLE, is_butterfly_link, trace_pidfiles
from butterfly.dataplane.netlink import Netlink
from butterfly.dataplane.nft import Nftables
from butterfly.dataplane.ruleset import tables
from butterfly.dataplane.sniffing import remove_table
from butterfly.dataplane.tracing import Tracer
from butterfly.errors import DataplaneError

__all__ = ["cleanup"]


def cleanup(*, socket_dir: str) -> None:
    """Remove every kernel object butterfly created in this network namespace:
    its nftables tables, its links (recognised by name and alias) and its traces."""
    problems = []
    nft = Nftables()
    try:
        for key in tables():
            try:
                if nft.list({"table": {"family": key.family, "name": TABLE}}) is not None:
                    nft.apply([{"delete": {"table": {"family": key.family, "name": TABLE}}}])
            except DataplaneError as exc:
                problems.append(str(exc))
        try:
            remove_table(nft)
        except DataplaneError as exc:
            problems.append(str(exc))
    finally:
        nft.close()
    tracer = Tracer()
    for pidfile in glob.glob(trace_pidfiles(socket_dir)):
        tracer.orphan(pidfile)
    with Netlink() as netlink:
        owned = [link for link in netlink.links() if is_butterfly_link(link.name, link.alias)]
        order = {"tun": 0, "veth": 0, "vxlan": 1, "bridge": 2}
        for link in sorted(owned, key=lambda link: order.get(link.kind, 3)):
            with contextlib.suppress(DataplaneError):
                if netlink.link(link.name) is not None:
                    netlink.delete_link(link.index)
        left = [link.name for link in netlink.links() if is_butterfly_link(link.name, link.alias)]
    if left:
        problems.append("links left: " + ", ".join(left))
    if problems:
        raise DataplaneError("cleanup: " + "; ".join(problems))
