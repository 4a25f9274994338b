"""What the CLI prints: the daemon's answers as text, or as JSON for scripts.

The text forms are the original C++ client's, line for line, because
operators' scripts parse them; where our daemon knows more than the original
printed (a nic's type, path and security groups), the extra lines come after
the original ones. The JSON forms carry every field under its protocol name.
Every function is pure and returns the whole text, ending with a newline
unless it is empty.
"""

import json
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.cli.requests import rule_hash

__all__ = [
    "NIC_TYPE_WORDS",
    "ids",
    "nic_details",
    "nic_stats",
    "protobuf_text",
    "rules",
    "status",
    "vni_peers",
]

NIC_TYPE_WORDS = {
    MessageV0.Nic.VHOST_USER_SERVER: "vhost-user",
    MessageV0.Nic.TAP: "tap",
    MessageV0.Nic.BENCH: "bench",
    MessageV0.Nic.NETNS: "netns",
}

_NOTHING = "Ø"
"""What the original prints for an absent rule field."""


def _json(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _lines(lines: Iterable[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _optional(message: Message, name: str) -> object:
    return getattr(message, name) if message.HasField(name) else None


def ids(items: Sequence[str], *, as_json: bool) -> str:
    """Any list of names: nics, security groups, members."""
    return _json(list(items)) if as_json else _lines(items)


def nic_stats(stats: MessageV0.NicStats, *, as_json: bool) -> str:
    """The original's two lines, then what only our daemon counts (when it says)."""
    received = getattr(stats, "in")
    sniffed = {
        name: getattr(stats, name)
        for name in ("sniffed_frames", "sniffed_bytes")
        if stats.HasField(name)
    }
    if as_json:
        return _json({"in": received, "out": stats.out, **sniffed})
    lines = [f"in: {received}", f"out: {stats.out}"]
    lines += [f"{name.replace('_', ' ')}: {value}" for name, value in sniffed.items()]
    return _lines(lines)


def nic_details(nic: MessageV0.Nic, *, as_json: bool) -> str:
    if as_json:
        return _json(
            {
                "id": nic.id,
                "mac": nic.mac,
                "vni": nic.vni,
                "ip": list(nic.ip),
                "security_group": list(nic.security_group),
                "ip_anti_spoof": nic.ip_anti_spoof,
                "bypass_filtering": nic.bypass_filtering,
                "type": MessageV0.Nic.Type.Name(nic.type),
                "path": _optional(nic, "path"),
                "packet_trace": _optional(nic, "packet_trace"),
                "packet_trace_path": _optional(nic, "packet_trace_path"),
                "sniff_target_nic_id": _optional(nic, "sniff_target_nic_id"),
                "mtu": _optional(nic, "mtu"),
                "max_connections": _optional(nic, "max_connections"),
                "max_new_connections": _optional(nic, "max_new_connections"),
            }
        )
    lines = [f"id: {nic.id}", f"mac: {nic.mac}", f"vni: {nic.vni}"]
    lines += [f"ip: {ip}" for ip in nic.ip]
    if nic.HasField("ip_anti_spoof"):
        lines.append(f"antispoof: {_bool(nic.ip_anti_spoof)}")
    if nic.HasField("sniff_target_nic_id"):
        lines.append(f"sniff target: {nic.sniff_target_nic_id}")
    if nic.HasField("bypass_filtering"):
        lines.append(f"bypass filtering: {_bool(nic.bypass_filtering)}")
    if nic.HasField("packet_trace"):
        lines.append(f"packet trace: {_bool(nic.packet_trace)}")
    if nic.HasField("packet_trace_path"):
        lines.append(f"packet trace path: {nic.packet_trace_path}")
    lines += [f"security group: {sg}" for sg in nic.security_group]
    lines.append(f"type: {NIC_TYPE_WORDS.get(nic.type, str(nic.type))}")
    if nic.HasField("path"):
        lines.append(f"path: {nic.path}")
    if nic.HasField("mtu"):
        lines.append(f"mtu: {nic.mtu}")
    if nic.HasField("max_connections"):
        lines.append(f"max connections: {nic.max_connections or 'no cap'}")
    if nic.HasField("max_new_connections"):
        lines.append(f"max new connections per second: {nic.max_new_connections or 'no cap'}")
    return _lines(lines)


def _cidr_text(rule: MessageV0.Rule) -> str | None:
    if not rule.HasField("cidr"):
        return None
    return f"{rule.cidr.address}/{rule.cidr.mask_size}"


def _rule_line(rule: MessageV0.Rule) -> str:
    def shown(value: object) -> str:
        return _NOTHING if value is None else str(value)

    return (
        f"{rule_hash(rule)} | "
        f"direction: {MessageV0.Rule.Direction.Name(rule.direction)} - "
        f"IP protocol: {rule.protocol} - "
        f"port start: {shown(_optional(rule, 'port_start'))} - "
        f"port end: {shown(_optional(rule, 'port_end'))} - "
        f"cidr: {shown(_cidr_text(rule))} - "
        f"members of sg: {shown(_optional(rule, 'security_group'))}"
    )


def rules(items: Sequence[MessageV0.Rule], *, as_json: bool) -> str:
    if as_json:
        return _json(
            [
                {
                    "hash": rule_hash(rule),
                    "direction": MessageV0.Rule.Direction.Name(rule.direction),
                    "protocol": rule.protocol,
                    "port_start": _optional(rule, "port_start"),
                    "port_end": _optional(rule, "port_end"),
                    "cidr": _cidr_text(rule),
                    "security_group": _optional(rule, "security_group"),
                }
                for rule in items
            ]
        )
    return _lines(_rule_line(rule) for rule in items)


_DRIFT_COUNTS = ("changes_seen", "changes_repaired", "repairs", "repair_failures")


def status(app: MessageV0.AppStatusRes, *, as_json: bool) -> str:
    reconcile = app.reconcile if app.HasField("reconcile") else None
    if as_json:
        fields: dict[str, Any] = {
            name: _optional(app, name)
            for name in ("start_date", "current_date", "request_counter", "graph_dot")
        }
        if reconcile is not None:
            fields["reconcile"] = {
                "running": reconcile.running,
                "done": reconcile.done,
                "total": reconcile.total,
                "milliseconds": reconcile.milliseconds,
                "problems": reconcile.problems,
            }
        if app.HasField("drift"):
            fields["drift"] = {
                **{name: getattr(app.drift, name) for name in _DRIFT_COUNTS},
                "report_only": app.drift.report_only,
                "last_changes": list(app.drift.last_changes),
                "last_change_date": _optional(app.drift, "last_change_date"),
            }
        return _json(fields)
    lines = _drift_lines(app.drift) if app.HasField("drift") else []
    if app.HasField("start_date"):
        lines.append(f"start date: {app.start_date}")
    if app.HasField("current_date"):
        lines.append(f"current date: {app.current_date}")
    if app.HasField("request_counter"):
        lines.append(f"request counter: {app.request_counter}")
    if reconcile is not None:
        lines.append(_reconcile_line(reconcile))
    if app.HasField("graph_dot"):
        lines += ["dot graph: ", app.graph_dot]
    return _lines(lines)


def _reconcile_line(reconcile: MessageV0.ReconcileStatus) -> str:
    """The start-up reconcile (a daemon of ours answers it when asked)."""
    seconds = reconcile.milliseconds / 1000
    if reconcile.running:
        line = f"start-up reconcile: running, {reconcile.done}/{reconcile.total} objects, "
        line += f"{seconds:.1f} s"
    else:
        line = f"start-up reconcile: done in {seconds:.1f} s ({reconcile.total} objects)"
    if reconcile.problems:
        line += f"; {reconcile.problems}"
    return line


def _drift_lines(drift: MessageV0.DriftStatus) -> list[str]:
    """What other software changed in the kernel, and what was put back."""
    mode = "report only, not repaired" if drift.report_only else "repaired"
    counts = ", ".join(f"{name.replace('_', ' ')} {getattr(drift, name)}" for name in _DRIFT_COUNTS)
    lines = [f"kernel drift ({mode}): {counts}"]
    if drift.HasField("last_change_date"):
        lines.append(f"last drift date: {drift.last_change_date}")
    lines += [f"  drift: {change}" for change in drift.last_changes]
    return lines


def vni_peers(groups: Sequence[MessageV0.VniPeers], *, as_json: bool) -> str:
    """One ``VNI PEER`` line per peer, easy to grep and to cut."""
    if as_json:
        return _json([{"vni": group.vni, "peer": list(group.peer)} for group in groups])
    return _lines(f"{group.vni} {peer}" for group in groups for peer in group.peer)


def protobuf_text(message: Message) -> str:
    """The protobuf text format that ``butterfly request`` reads back."""
    return text_format.MessageToString(message, as_utf8=True)
