"""The original daemon's options that name DPDK or a CPU: what each means here.

The original butterflyd ran on DPDK; init scripts, systemd units and ini
files written for it carry ``--dpdk-args``, ``--dpdk-port``,
``--graph-cpu-core`` and ``--nic-mtu max``. This module reads those values
(pure parsing, no I/O): the one piece of ``--dpdk-args`` that still has a
meaning (the interface a ``--vdev=...,iface=NAME`` hands to DPDK, which is
the underlay), CPU lists, and the text that says what has none. Imported
only by :mod:`butterfly.daemon.config`.
"""

import shlex
from dataclasses import dataclass

from butterfly.errors import ConfigError

__all__ = ["DPDK_HELP", "DpdkArgs", "parse_cpu_list", "parse_dpdk_args"]

DPDK_HELP = (
    "butterflyd has no DPDK: packets go through the Linux kernel (bridges, VXLAN,\n"
    "nftables) and the vhost-user backend's worker processes, so there are no EAL\n"
    "options to list. For the original's command lines and ini files:\n"
    "  --dpdk-args ARGS   accepted; a --vdev=...,iface=NAME in it names the underlay\n"
    "                     interface when --ip does not decide it; the rest is ignored\n"
    "  --dpdk-port PORT   accepted and ignored\n"
    "  -u/--graph-cpu-core CPUS   the CPUs the vhost-user workers run on\n"
)

_IFNAMSIZ = 16
_MAX_CPU = 8191
"""Linux's largest NR_CPUS: a bound on a CPU list, so a typo cannot fill memory."""


@dataclass(frozen=True, slots=True)
class DpdkArgs:
    """What ``--dpdk-args`` says that this daemon can use, and what it cannot."""

    interface: str | None
    """The interface named by the first ``--vdev=...,iface=NAME``, if any."""
    unused: tuple[str, ...]
    """Every other argument, as given: accepted and not applicable."""


def parse_dpdk_args(text: str, where: str) -> DpdkArgs:
    """Split ``text`` as the original did (shell words) and pick out the interface.

    ``--vdev`` comes as ``--vdev=SPEC`` or ``--vdev SPEC``; SPEC is
    ``DRIVER,key=value,...`` and ``iface`` is the key pcap and af_packet
    devices name an existing interface with.
    """
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise ConfigError(f"{where}: dpdk-args {text!r}: {error}") from None
    interface: str | None = None
    unused: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        spec: str | None = None
        if word.startswith("--vdev="):
            spec = word[len("--vdev=") :]
        elif word == "--vdev" and index + 1 < len(words):
            index += 1
            spec = words[index]
            word = f"{word} {spec}"
        named = _vdev_interface(spec, where) if spec is not None else None
        if named is not None and interface is None:
            interface = named
        else:
            unused.append(word)
        index += 1
    return DpdkArgs(interface=interface, unused=tuple(unused))


def _vdev_interface(spec: str, where: str) -> str | None:
    for pair in spec.split(",")[1:]:
        key, _, value = pair.partition("=")
        if key.strip() == "iface":
            name = value.strip()
            if not name or len(name.encode()) >= _IFNAMSIZ or "/" in name or " " in name:
                raise ConfigError(
                    f"{where}: dpdk-args --vdev {spec!r}: iface {name!r} is not an interface name"
                )
            return name
    return None


def parse_cpu_list(text: str, where: str) -> tuple[int, ...]:
    """``0``, ``0,2`` or ``0-3,6`` (taskset's and isolcpus' notation): sorted CPUs."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise ConfigError(
                f"{where}: graph-cpu-core {text!r} is not a CPU number or list (e.g. 0 or 0-3,6)"
            ) from None
        if low < 0 or high < low or high > _MAX_CPU:
            raise ConfigError(f"{where}: graph-cpu-core {text!r}: {part.strip()!r} is no CPU range")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))
