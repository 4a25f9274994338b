"""A data plane that programs nothing: the control plane alone.

``butterflyd --no-dataplane`` runs with it, for API tests without root and
API benchmarks. It answers what the original answers before any packet
moves: the vhost-user socket path or tap name as ``path``, zero counters,
and a graph of the desired state (not of a data path, since there is none).
"""

from collections.abc import Iterator, Mapping, Sequence

from butterfly.dataplane.base import Attachment, Counters, Progress, SgChange
from butterfly.dataplane.naming import tap_name, vhost_socket_path
from butterfly.dataplane.tracing import trace_settings
from butterfly.model import StateView, Vnic, VnicType
from butterfly.model.sessions import Session

__all__ = ["ControlOnlyDataplane", "desired_state_graph"]


class ControlOnlyDataplane:
    """``packet_trace_default``: what nic_details reports for vnics that do not
    say (nothing is traced, but the settings are the daemon's as with the kernel)."""

    def __init__(self, *, socket_dir: str, packet_trace_default: bool = False) -> None:
        self._socket_dir = socket_dir
        self._trace_default = packet_trace_default

    def reconcile(self, state: StateView) -> None:
        pass

    def reconcile_steps(self, state: StateView) -> Iterator[Progress]:
        yield Progress(1, 1)

    def plug(self, vnic: Vnic, replaced: Vnic | None, state: StateView) -> Attachment:
        return self.attachment(vnic)

    def update(self, before: Vnic, after: Vnic, state: StateView) -> None:
        pass

    def unplug(self, vnic: Vnic, state: StateView) -> None:
        pass

    def update_security_groups(self, changes: Mapping[str, SgChange], state: StateView) -> None:
        pass

    def update_peers(self, vni: int, state: StateView) -> None:
        pass

    def attachment(self, vnic: Vnic) -> Attachment:
        if vnic.type == VnicType.VHOST_USER_SERVER:
            path = vhost_socket_path(self._socket_dir, vnic.id)
        else:
            path = vnic.netns if vnic.type == VnicType.NETNS else tap_name(vnic.id)
        traced, trace_file = trace_settings(
            vnic, default=self._trace_default, socket_dir=self._socket_dir
        )
        return Attachment(path, packet_trace=traced, packet_trace_path=trace_file)

    def counters(self, vnic: Vnic) -> Counters:
        return Counters()

    def sessions(self, vnic: Vnic) -> tuple[Session, ...]:
        """No kernel, no connections: an export holds none."""
        return ()

    def load_sessions(self, vnic: Vnic, sessions: Sequence[Session]) -> int:
        """No kernel to load them into: the blob was checked, nothing is new."""
        return 0

    def graph(self, state: StateView) -> str:
        return desired_state_graph(state)

    def close(self) -> None:
        pass


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def desired_state_graph(state: StateView) -> str:
    """VNIs as clusters holding their vnics, and the security groups they use."""
    lines = ["digraph butterfly {", "  rankdir=LR;", "  node [shape=box];"]
    vnis = sorted({vnic.vni for vnic in state.vnics()})
    used_sgs: set[str] = set()
    for vni in vnis:
        lines.append(f"  subgraph cluster_vni_{vni} {{")
        lines.append(f'    label="vni {vni}";')
        for vnic in state.vnics_in(vni):
            label = f"{vnic.id}\n{vnic.mac}\n{' '.join(vnic.ips)}"
            lines.append(f"    {_quote('vnic:' + vnic.id)} [label={_quote(label)}];")
        lines.append("  }")
    for vnic in state.vnics():
        for sg_id in vnic.security_groups:
            used_sgs.add(sg_id)
            lines.append(f"  {_quote('sg:' + sg_id)} -> {_quote('vnic:' + vnic.id)};")
    for sg in state.sgs():
        used_sgs.add(sg.id)
    for sg_id in sorted(used_sgs):
        lines.append(f"  {_quote('sg:' + sg_id)} [shape=ellipse, label={_quote('sg ' + sg_id)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
