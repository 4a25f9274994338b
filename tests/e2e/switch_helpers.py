"""What the switch's end-to-end tests share: security groups set up through the CLI, and
traffic that runs in the background while a test changes the switch (ping, iperf3).

The lab itself (hosts with a real butterflyd, VMs, the fabric) is butterfly_lab.lab.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from typing import Any

from butterfly_lab.lab import Host, LabError, Vm, parse_ping, wait_for

__all__ = ["BackgroundPing", "Iperf3", "neighbour_mac", "open_sg", "wait_listening"]


def open_sg(host: Host, sg_id: str = "open") -> None:
    """A security group letting everything in, IPv4 and IPv6 (one chained CLI call)."""
    host.cli(
        "sg", "add", sg_id,
        "+", "sg", "rule", "add", sg_id, "--ip-proto", "all", "--cidr", "0.0.0.0/0",
        "+", "sg", "rule", "add", sg_id, "--ip-proto", "all", "--cidr", "::/0",
    )  # fmt: skip


def neighbour_mac(vm: Vm, address: str) -> str | None:
    """The MAC ``vm``'s kernel has for ``address`` (None when it has no usable entry)."""
    entries = json.loads(vm.ip("-j", "neigh", "show", address))
    for entry in entries:
        if "lladdr" in entry and "FAILED" not in entry.get("state", []):
            return str(entry["lladdr"])
    return None


def wait_listening(vm: Vm, port: int, proto: str = "tcp") -> None:
    """Until something listens on ``port`` inside ``vm`` (a server just started)."""
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    wait_for(
        lambda: bool(vm.exec("ss", flag, f"sport = :{port}").strip()),
        f"{proto} port {port} listening in {vm.name}",
    )


class BackgroundPing:
    """``ping`` running in a VM while the test acts; counts replies as they come.

    With ``count`` it ends by itself once every reply is in (or lost): the only way to
    read a loss figure without a probe still in flight. ``stop`` interrupts it (SIGINT,
    by pid) for runs where only "replies came back" matters.
    """

    def __init__(
        self, vm: Vm, address: str, *, interval: float = 0.05, count: int | None = None
    ) -> None:
        argv = ["ping", "-n", "-i", str(interval), "-W", "2"]
        if count is not None:
            argv += ["-c", str(count)]
        self.process = vm.popen(*argv, address)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def replies(self) -> int:
        return sum("bytes from" in line for line in list(self.lines))

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_replies(self, count: int, timeout: float = 10) -> None:
        wait_for(lambda: self.replies >= count, f"{count} ping replies", timeout)

    def wait(self, timeout: float = 60) -> tuple[int, int, str]:
        """Until ping ends by itself: (transmitted, received, its output)."""
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        output = "".join(self.lines)
        result = parse_ping(output)
        return result.transmitted, result.received, output

    def stop(self) -> str:
        """SIGINT (ping prints its summary) and wait; the output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        return "".join(self.lines)


class Iperf3:
    """An iperf3 server in one VM and a paced client in another, reported as JSON.

    Pacing (``bitrate``) keeps two cores free enough for the switch's own work; the
    per-interval byte counts then show whether the stream ever stalled.
    """

    def __init__(
        self,
        server: Vm,
        client: Vm,
        address: str,
        *,
        seconds: float,
        port: int = 5201,
        bitrate: str = "50M",
        interval: float = 0.5,
    ) -> None:
        self.server = server.popen("iperf3", "-s", "-1", "-p", str(port), stdout=subprocess.DEVNULL)
        wait_listening(server, port)
        self.client = client.popen(
            "iperf3", "-c", address, "-p", str(port), "-t", str(seconds),
            "-b", bitrate, "-i", str(interval), "-J",
        )  # fmt: skip

    def result(self, timeout: float = 60) -> dict[str, Any]:
        """The client's JSON report, once it ended; LabError if it reported an error."""
        output, _ = self.client.communicate(timeout=timeout)
        self.server.wait(timeout=timeout)
        report: dict[str, Any] = json.loads(output)
        if "error" in report:
            raise LabError(f"iperf3: {report['error']}")
        return report

    @staticmethod
    def stalls(report: dict[str, Any]) -> list[str]:
        """The intervals in which not a byte went through (``start-end``)."""
        return [
            f"{interval['sum']['start']:.1f}-{interval['sum']['end']:.1f}"
            for interval in report["intervals"]
            if interval["sum"]["bytes"] == 0 and interval["sum"]["seconds"] > 0.05
        ]
