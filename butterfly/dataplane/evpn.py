"""The BGP EVPN underlay: what the kernel must hold for FRR to carry the VNIs,
and what FRR says it learned.

With ``--underlay evpn`` no BGP runs in butterfly: FRR's ``zebra`` reads
the kernel, ``bgpd`` speaks EVPN (RFC 7432 / RFC 8365). For that the kernel
data plane makes each VXLAN device with a local tunnel address, no group
and no learning (zebra installs remote MACs as ``extern_learn`` forwarding
entries and the flood list as all-zero ones), pins every vnic's MAC on its
port (zebra advertises a type-2 MAC route for a static entry at once, not
once the VM speaks) and gives the bridge a permanent neighbour entry per vnic
IP (a type-2 MAC/IP route). Neighbour suppression on the VXLAN port (the
kernel's model: it is set on the network side; a request arriving on a
suppressing port is never answered by proxy) makes the bridge answer a
VM's ARP or neighbour solicitation for a remote vnic from FRR's entries,
and keeps every request whose MAC it knows, local or remote, off the
underlay.

This module owns the pure part (which neighbour entries a VNI wants, what
to change) and the reading of FRR's state through ``vtysh ... json``,
bounded in time: FRR being down or absent is a state to show, never an
error of butterfly's. It imports only the model.
"""

import hashlib
import ipaddress
import json
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from butterfly.model import Vnic

__all__ = [
    "VTYSH_TIMEOUT",
    "EvpnStatus",
    "FrrReader",
    "VniLearned",
    "bridge_mac",
    "neighbour_changes",
    "parse_status",
    "wanted_neighbours",
]

VTYSH_TIMEOUT = 2.0
"""Seconds a vtysh question may take before FRR counts as not answering."""


def bridge_mac(underlay_ip: str, vni: int) -> str:
    """A fixed, locally administered MAC for the VNI's bridge on this host.

    A bridge whose MAC nobody set takes its lowest port's, and the kernel
    flushes a device's neighbour entries whenever its MAC changes: without
    this, removing one vnic could wipe the entries of all the others (and
    FRR's) from the bridge.
    """
    digest = hashlib.sha256(f"{underlay_ip}/{vni}".encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0x02, *digest[:5]))


def wanted_neighbours(vnics: Iterable[Vnic]) -> dict[str, str]:
    """IP -> MAC of the neighbour entries a VNI's bridge holds for its local vnics."""
    return {str(ipaddress.ip_address(ip)): vnic.mac.lower() for vnic in vnics for ip in vnic.ips}


def neighbour_changes(
    present: Mapping[str, str], wanted: Mapping[str, str]
) -> tuple[list[tuple[str, str]], list[str]]:
    """(entries to set as (IP, MAC), IPs to remove) taking ``present`` to ``wanted``."""
    to_set = sorted((ip, mac) for ip, mac in wanted.items() if present.get(ip) != mac)
    to_remove = sorted(ip for ip in present if ip not in wanted)
    return to_set, to_remove


@dataclass(frozen=True, slots=True)
class VniLearned:
    """What FRR learned of one VNI from the other VTEPs."""

    remote_vteps: tuple[tuple[str, int], ...] = ()
    """Each remote VTEP flooded to, with how many MACs are behind it."""
    remote_macs: int = 0
    local_macs: int = 0


@dataclass(frozen=True, slots=True)
class EvpnStatus:
    """FRR's EVPN state as butterfly shows it: ``error`` says why there is none."""

    error: str | None = None
    sessions: dict[str, str] = field(default_factory=dict)
    """BGP neighbour -> session state ("Established", "Active"...)."""
    vnis: dict[int, VniLearned] = field(default_factory=dict)

    def describe(self, vni: int) -> str:
        """One line for the graph's VXLAN node."""
        if self.error is not None:
            return f"EVPN (FRR: {self.error})"
        learned = self.vnis.get(vni)
        if learned is None:
            return "EVPN (FRR does not carry this VNI)"
        vteps = ", ".join(vtep for vtep, _ in learned.remote_vteps) or "none"
        return f"EVPN: remote VTEPs {vteps}; {learned.remote_macs} remote MACs"

    def remote_vteps(self, vni: int) -> tuple[tuple[str, int], ...]:
        learned = self.vnis.get(vni)
        return learned.remote_vteps if learned is not None else ()

    def sessions_line(self) -> str:
        if self.error is not None:
            return f"FRR: {self.error}"
        if not self.sessions:
            return "BGP EVPN: no session configured"
        return "BGP EVPN: " + ", ".join(
            f"{peer} {state}" for peer, state in sorted(self.sessions.items())
        )


def parse_status(summary: Any, macs: Any, vnis: Any) -> EvpnStatus:
    """The status from vtysh's JSON of ``show bgp l2vpn evpn summary``,
    ``show evpn mac vni all`` and ``show evpn vni``."""
    sessions = {}
    if isinstance(summary, dict):
        for peer, details in (summary.get("peers") or {}).items():
            if isinstance(details, dict):
                sessions[str(peer)] = str(details.get("state", "unknown"))
    learned: dict[int, VniLearned] = {}
    for key, details in (vnis if isinstance(vnis, dict) else {}).items():
        if not isinstance(details, dict) or not str(key).isdigit():
            continue
        entries = (macs.get(str(key)) or {}) if isinstance(macs, dict) else {}
        found = [m for m in (entries.get("macs") or {}).values() if isinstance(m, dict)]
        behind = Counter(str(m.get("remoteVtep")) for m in found if m.get("type") == "remote")
        vteps = sorted(set(map(str, details.get("remoteVteps") or ())) | set(behind))
        learned[int(key)] = VniLearned(
            remote_vteps=tuple((vtep, behind[vtep]) for vtep in vteps),
            remote_macs=sum(behind.values()),
            local_macs=sum(m.get("type") == "local" for m in found),
        )
    return EvpnStatus(sessions=sessions, vnis=learned)


class FrrReader:
    """Asks FRR (``vtysh``, of the path space ``instance`` given to FRR's
    daemons with ``-N``, or the default one) for its EVPN state."""

    def __init__(self, *, instance: str | None = None, vtysh: str = "vtysh") -> None:
        self._argv = [vtysh] + (["-N", instance] if instance else [])

    def status(self) -> EvpnStatus:
        """One vtysh run (at most VTYSH_TIMEOUT) answering the three questions."""
        commands = (
            "show bgp l2vpn evpn summary json",
            "show evpn mac vni all json",
            "show evpn vni json",
        )
        argv = [*self._argv]
        for command in commands:
            argv += ["-c", command]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=VTYSH_TIMEOUT, check=False
            )
        except FileNotFoundError:
            return EvpnStatus(error="vtysh is not installed")
        except subprocess.TimeoutExpired:
            return EvpnStatus(error=f"vtysh did not answer in {VTYSH_TIMEOUT:g} s")
        if done.returncode != 0:
            reason = (done.stderr.strip() or done.stdout.strip()).splitlines()
            return EvpnStatus(
                error=f"not running ({reason[-1] if reason else f'vtysh status {done.returncode}'})"
            )
        answers = _documents(done.stdout)
        if len(answers) != len(commands):
            return EvpnStatus(error="vtysh's answer is not the JSON asked for (is bgpd running?)")
        return parse_status(*answers)


def _documents(text: str) -> list[Any]:
    """The JSON documents vtysh printed one after the other ([] if any is not JSON)."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    position = 0
    while (position := _skip_space(text, position)) < len(text):
        try:
            document, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return []
        found.append(document)
    return found


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position
