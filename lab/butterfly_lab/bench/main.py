"""``butterfly-bench``: one subcommand per benchmark module.

A benchmark module offers ``add_arguments(parser)`` and ``run(args) -> int``
(the exit code). Adding one is adding its line to :data:`SUBCOMMANDS`; the
module is imported only when its subcommand runs.
"""

import argparse
import importlib
import sys
from typing import Protocol, cast

__all__ = ["SUBCOMMANDS", "main"]

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "api": ("butterfly_lab.bench.api", "control plane: API requests/s, latency, daemon memory"),
    "dataplane": (
        "butterfly_lab.bench.dataplane",
        "data path: latency, throughput, SG member changes",
    ),
    "scale": (
        "butterfly_lab.bench.scale",
        "a full host, data plane on: request p99, restart, memory, against ip/nft batch",
    ),
    "vhost": (
        "butterfly_lab.bench.vhost",
        "vhost-user: frames/s vs DPDK, TSO, guests, API under load",
    ),
    "frames": (
        "butterfly_lab.bench.frames",
        "cost per frame: 64 B from a C writer, each path vs bridge+br_netfilter, one sitting",
    ),
    "drift": ("butterfly_lab.bench.drift", "other software's changes: window until repaired"),
    "metrics": (
        "butterfly_lab.bench.metrics",
        "Prometheus: scraping 10,000 vnics, API under scrapes",
    ),
    "evpn": (
        "butterfly_lab.bench.evpn",
        "EVPN with FRR: nic_add to reachable, underlay BUM per ARP",
    ),
    "soak": (
        "butterfly_lab.bench.soak",
        "vnic churn: daemon memory, descriptors, latency per 1,000",
    ),
}


class Benchmark(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> Benchmark:
    return cast(Benchmark, importlib.import_module(SUBCOMMANDS[name][0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="butterfly-bench", description="Measure butterfly against its targets."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    arguments = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in arguments if not a.startswith("-")), None)
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _load(name).add_arguments(sub)
    args = parser.parse_args(arguments)
    return _load(args.command).run(args)


if __name__ == "__main__":
    sys.exit(main())
