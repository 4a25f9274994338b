"""FRR in a lab host: one ``zebra`` + ``bgpd`` per namespace, for the EVPN underlay.

This module owns the FRR processes of a lab and nothing else. Each
:class:`Frr` runs Debian's ``zebra`` and ``bgpd`` inside one namespace in
FRR's path space ``-N NAME`` (NAME is the namespace's name, unique to the
run), with configuration files in the host's folder: ``bgpd.conf`` is what
``butterflyd -c INI --frr-config`` writes from the host's ini file.
The daemons run in the foreground of processes the lab started, so they
are killed by pid; their socket folder ``/var/run/frr/NAME`` goes with them.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

from butterfly_lab.daemon import butterflyd_command
from butterfly_lab.lab import (
    PREFIX_BASE,
    UNDERLAY_V4,
    Host,
    Lab,
    LabError,
    Netns,
    sh,
    wait_for,
)

__all__ = ["FRR_DIR", "Frr", "evpn_hosts", "frr_available", "reap_stale_frr", "wait_seconds"]

FRR_DIR = "/usr/lib/frr"
_RUN_DIR = "/var/run/frr"


def frr_available() -> bool:
    """Whether Debian's ``frr`` package is installed (zebra, bgpd, vtysh)."""
    return all(os.access(os.path.join(FRR_DIR, d), os.X_OK) for d in ("zebra", "bgpd")) and bool(
        shutil.which("vtysh")
    )


class Frr:
    """zebra + bgpd of one namespace; ``ini`` is the host's butterflyd ini file,
    whose ``[evpn]`` section gives bgpd's configuration."""

    def __init__(self, netns: Netns, folder: str, ini: str) -> None:
        self.netns = netns
        self.name = netns.name
        self.folder = folder
        self.ini = ini
        self._processes: dict[str, subprocess.Popen[Any]] = {}
        os.makedirs(folder, exist_ok=True)
        with open(self._path("zebra.conf"), "w", encoding="ascii") as file:
            file.write(f"hostname {self.name}\nlog file {self._path('zebra.log')}\n")
        sh(*butterflyd_command(), "-c", ini, "--frr-config", self._path("bgpd.conf"))

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def start(self) -> None:
        """Start zebra, then bgpd once zebra's API socket exists."""
        self._spawn("zebra")
        api = os.path.join(_RUN_DIR, self.name, "zserv.api")
        wait_for(lambda: os.path.exists(api), f"zebra of {self.name}")
        self._spawn("bgpd")
        wait_for(lambda: os.path.exists(os.path.join(_RUN_DIR, self.name, "bgpd.vty")), "bgpd")

    def _spawn(self, daemon: str) -> None:
        with open(self._path(f"{daemon}.err"), "ab") as errors:
            self._processes[daemon] = subprocess.Popen(
            [
                "ip", "netns", "exec", self.name, os.path.join(FRR_DIR, daemon),
                "-N", self.name, "-f", self._path(f"{daemon}.conf"),
                "-i", self._path(f"{daemon}.pid"), "-u", "root", "-g", "frrvty", "-P", "0",
            ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL both daemons (by pid), wait for them, and remove the sockets
        they left (a new start waits for fresh ones)."""
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        self._processes.clear()
        shutil.rmtree(os.path.join(_RUN_DIR, self.name), ignore_errors=True)

    def close(self) -> None:
        self.kill()

    # -- asking it

    def vtysh(self, command: str) -> Any:
        """vtysh's JSON answer to ``command`` (which ends in ``json``)."""
        output = sh("vtysh", "-N", self.name, "-c", command, timeout=10)
        return json.loads(output or "{}")

    def established(self) -> bool:
        peers = self.vtysh("show bgp l2vpn evpn summary json").get("peers", {})
        return bool(peers) and all(p.get("state") == "Established" for p in peers.values())

    def wait_established(self, timeout: float = 30) -> None:
        try:
            wait_for(self.established, f"BGP EVPN sessions of {self.name}", timeout)
        except LabError as error:
            summary = self.vtysh("show bgp l2vpn evpn summary json")
            raise LabError(f"{self.name}: sessions not up: {summary}") from error

    def remote_macs(self, vni: int) -> dict[str, str]:
        """MAC -> remote VTEP that zebra learned for ``vni``."""
        macs = self.vtysh(f"show evpn mac vni {vni} json").get("macs", {})
        return {mac: m["remoteVtep"] for mac, m in macs.items() if m.get("type") == "remote"}


def reap_stale_frr() -> list[str]:
    """Remove the socket folders FRR left in /var/run/frr for the namespaces of
    labs whose process is gone (their daemons are killed by the lab's own
    :func:`~butterfly_lab.lab.reap_stale`: their command lines name the lab's folder)."""
    removed = []
    pattern = re.compile(rf"{re.escape(PREFIX_BASE)}(\d+)[a-z]\d+")
    for entry in sorted(os.listdir(_RUN_DIR)) if os.path.isdir(_RUN_DIR) else []:
        match = pattern.fullmatch(entry)
        if match is None or os.path.exists(f"/proc/{match.group(1)}"):
            continue
        shutil.rmtree(os.path.join(_RUN_DIR, entry), ignore_errors=True)
        removed.append(entry)
    return removed


def evpn_hosts(lab: Lab, count: int, *, asn: int = 65014) -> tuple[list[Host], list[Frr]]:
    """``count`` hosts with ``underlay = evpn`` and their FRR, host 0 being the
    route reflector of the others, on a fabric that drops multicast; started,
    sessions up. The caller closes the FRRs (they are closed here on failure)."""
    reap_stale_frr()
    lab.fabric.block_multicast()
    hosts = [lab.host(start=False) for _ in range(count)]
    frrs: list[Frr] = []
    try:
        for index, host in enumerate(hosts):
            if index == 0:
                peers = f"route-reflector-clients = {UNDERLAY_V4.format(0)}/24\n"
            else:
                peers = f"neighbors = {hosts[0].address}\n"
            ini = os.path.join(host.folder, "butterflyd.ini")
            with open(ini, "w", encoding="ascii") as file:
                file.write(
                    "[general]\nunderlay = evpn\n"
                    f"[evpn]\nasn = {asn}\nrouter-id = {host.address}\n{peers}"
                    f"frr-instance = {host.name}\n"
                )
            host.daemon.extra_args += ["-c", ini]
            frrs.append(Frr(host, os.path.join(host.folder, "frr"), ini))
        for frr in frrs:
            frr.start()
        for host in hosts:
            host.spawn()
        for host in hosts:
            host.wait_ready()
        for frr in frrs:
            frr.wait_established()
    except BaseException:
        for frr in frrs:
            frr.close()
        raise
    return hosts, frrs


def wait_seconds(condition: Any, what: str, timeout: float) -> float:
    """Poll ``condition`` every 20 ms; seconds it took (LabError after ``timeout``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise LabError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start
