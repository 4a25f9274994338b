"""butterflyd started as the original daemon was: its README's command line, its
sample ini file, and each of its options taking effect (or said not to apply).

Every daemon runs in a network namespace of this test holding the original
README's underlay, ``eth0`` with 192.168.0.1, and a decoy ``eth1`` with the
namespace's default route; the README's verbatim command line also gets a
mount namespace of its own, so that its ``-s /tmp`` and the default state
file ``/var/lib/butterfly`` are folders of this test. Everything is named
from a run-unique prefix and removed in teardown; daemons are stopped by pid.
"""

import base64
import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from vhost.frontend import Frontend

from butterfly.api.client import Client
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.offloads import offloads
from butterfly.vhost.protocol import OFFLOAD_FEATURES
from butterfly_lab.daemon import DaemonProcess, butterflyd_command
from butterfly_lab.lab import LabError, Netns, butterfly_cli, wait_for

README_COMMAND = [
    "-i",
    "192.168.0.1",
    "-s",
    "/tmp",
    "--dpdk-args",
    "-c1 -n1 --socket-mem 64 --vdev=eth_pcap0,iface=eth0",
]
"""``sudo butterflyd -i 192.168.0.1 -s /tmp --dpdk-args "..."``, from the original README."""
CPU = max(os.sched_getaffinity(0))
"""The CPU given to -u: the last one, so never what a worker gets by default."""
_RUN = f"bfo{os.getpid() % 1000000}"
_serial = itertools.count()


@dataclass
class Site:
    """A namespace with the README's underlay, and a folder."""

    netns: Netns
    folder: str

    def vxlan(self, vni: int) -> str:
        """``local ADDRESS dev IFNAME`` of the VNI's VXLAN device."""
        details = self.netns.ip("-d", "link", "show", f"bfvx{vni}")
        found = re.search(r"local (\S+) dev (\S+)", details)
        assert found, details
        return found.group(0)


@pytest.fixture
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    netns = Netns(f"{_RUN}n{next(_serial)}")
    folder = str(tmp_path_factory.mktemp("original"))
    try:
        for name, address in (("eth0", "192.168.0.1/24"), ("eth1", "10.99.0.1/24")):
            netns.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
            netns.ip("addr", "add", address, "dev", name)
            netns.ip("link", "set", name, "up")
            netns.ip("link", "set", f"{name}p", "up")
        netns.ip("route", "add", "default", "via", "10.99.0.254", "dev", "eth1")
        yield Site(netns, folder)
    finally:
        netns.close()
        shutil.rmtree(folder, ignore_errors=True)


def _cli(site: Site, *argv: str) -> str:
    """The butterfly CLI inside the site's namespace, on its default endpoint."""
    return site.netns.exec(*butterfly_cli(), "-t", "2000", *argv)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.read()


def _answers(site: Site) -> bool:
    try:
        _cli(site, "status")
    except LabError:
        return False
    return True


def _workers(daemon_pid: int) -> list[int]:
    """The daemon's vhost-user workers (not the short-lived children it forks
    to read the nftables listing, which keep the daemon's affinity)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    command = cmdline.read()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == daemon_pid and b"butterfly.vhost.worker" in command:
                children.append(int(entry))
    return children


def _overmount(real: str, private: str) -> str:
    """Shell commands mounting ``private`` over ``real``; the checkout (the folder
    holding the venv) stays visible when it lives below ``real`` (CI's clone may)."""
    checkout = os.path.dirname(sys.prefix)
    commands = []
    if checkout.startswith(real + "/"):
        inside = private + checkout[len(real) :]
        commands.append(f"mkdir -p {inside} && mount --bind {checkout} {inside}")
    commands.append(f"mount --rbind {private} {real}")
    return " && ".join(commands)


def test_the_original_readme_command_line_verbatim(site: Site) -> None:
    """The README's command line starts the daemon, which then serves the
    README's ``butterfly nic add`` (a vhost-user vnic) on eth0's VXLAN."""
    private_tmp = os.path.join(site.folder, "tmp")
    private_var_lib = os.path.join(site.folder, "var-lib")
    os.makedirs(private_tmp)
    os.makedirs(private_var_lib)
    log_path = os.path.join(site.folder, "butterflyd.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c",
                f"{_overmount('/var/lib', private_var_lib)} && {_overmount('/tmp', private_tmp)}"
                ' && exec "$@"',
                "sh", "ip", "netns", "exec", site.netns.name,
                *butterflyd_command(), *README_COMMAND,
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(
            lambda: process.poll() is not None or _answers(site),
            "butterflyd to answer on tcp://0.0.0.0:9999",
            timeout=30,
        )
        assert process.poll() is None, _read(log_path)
        _cli(site, "nic", "add", "--ip", "42.0.0.1", "--mac", "52:54:00:12:34:01",
             "--vni", "1337", "--id", "vnic_1")  # fmt: skip
        assert "vnic_1" in _cli(site, "nic", "list")
        assert os.path.exists(os.path.join(private_tmp, "qemu-vhost-vnic_1"))
        assert os.path.exists(os.path.join(private_var_lib, "butterfly", "state.db"))
        assert site.vxlan(1337) == "local 192.168.0.1 dev eth0"
    finally:
        if process.poll() is None:
            process.terminate()
        assert process.wait(timeout=15) == 0, _read(log_path)


def _sample_ini(site: Site, key_path: str) -> str:
    """The original's sample butterflyd.ini, every key set."""
    path = os.path.join(site.folder, "butterflyd.ini")
    with open(path, "w", encoding="ascii") as ini:
        ini.write(
            "; Note: all parameters given through the configuration file to butterfly\n"
            ";       will overwrite thoses given by command-line\n"
            "\n[general]\n\n"
            "; Set log level of butterfly\n"
            "log-level=debug\n"
            "; Set ip address to use by butterfly on it's DPDK NIC\n"
            "ip=192.168.0.1\n"
            "; Endpoint the API will listen to. This is a ZMQ endpoint.\n"
            f"endpoint=ipc://{site.folder}/api.sock\n"
            "; Set socket directory where butterfly will create NIC sockets\n"
            f"socket-dir={site.folder}\n"
            "; Choose your CPU core where to run packet processing (default=0)\n"
            f"graph-cpu-core={CPU}\n"
            "; DPDK arguments\n"
            "dpdk-args=-c1 -n1 --socket-mem 128\n"
            "; Physical NIC MTU\n"
            ";nic-mtu=9000\n"
            "nic-mtu=max\n"
            "; Dpdk port to use\n"
            "dpdk-port=0\n"
            "\n[security]\n"
            f"encryption_key_path={key_path}\n"
        )
    return path


def test_the_original_sample_ini_with_every_key(site: Site) -> None:
    """The file's values win over the command line's (-l error, -m 9000, -u 0);
    the DPDK ones that mean nothing here are said once; a nic_add is served,
    encrypted, its worker on the file's CPU, its MTU the underlay's less VXLAN's."""
    key = os.urandom(32)
    key_path = os.path.join(site.folder, "key")
    with open(key_path, "wb") as file:
        file.write(base64.b64encode(key) + b"\n")
    daemon = DaemonProcess(
        site.folder,
        netns=site.netns.name,
        dataplane=True,
        endpoint=f"ipc://{site.folder}/api.sock",
        config_path=_sample_ini(site, key_path),
        log_level="error",
        extra_args=["-m", "9000", "-u", "0"],
    )
    with daemon, Client(endpoint=daemon.endpoint, key=key, timeout_ms=20_000) as client:
        daemon.start(timeout=30)
        request = MessageV0.Request()
        request.nic_add.id = "vnic_1"
        request.nic_add.mac = "52:54:00:12:34:01"
        request.nic_add.vni = 1337
        request.nic_add.ip.append("42.0.0.1")
        response = client.call(request).response
        assert response.status.status, response.status.error.description
        asked = MessageV0.Request(nic_details="vnic_1", with_additions=True)
        (details,) = client.call(asked).response.nic_details
        assert details.mtu == 1500 - 50
        assert site.vxlan(1337) == "local 192.168.0.1 dev eth0"
        workers = _workers(daemon.pid)
        assert workers
        assert all(os.sched_getaffinity(pid) == {CPU} for pid in workers)
        log = daemon.log()
        assert " INFO " in log  # log-level from the file, over -l error
        for option in ("dpdk-args '-c1 -n1 --socket-mem 128'", "dpdk-port 0"):
            said = f"option {option}: accepted, and not applicable here (butterflyd has no DPDK)"
            assert log.count(said) == 1, log


@pytest.mark.parametrize("no_offload", [False, True])
def test_no_offload_and_graph_cpu_core(site: Site, no_offload: bool) -> None:
    """With --no-offload, both ends of a NETNS vnic's veth have no checksum or
    TSO offload, a vhost-user guest is offered none, so the backend sets none
    on its tap; -u puts the vhost-user workers on that CPU. Without them (the
    positive control) the kernel's defaults stay and a guest gets them all."""
    vm = Netns(f"{_RUN}v{next(_serial)}")
    options = ["--no-offload", "-u", str(CPU)] if no_offload else []
    daemon = DaemonProcess(
        site.folder,
        netns=site.netns.name,
        dataplane=True,
        endpoint=f"ipc://{site.folder}/api.sock",
        extra_args=["-i", "192.168.0.1", *options],
    )
    try:
        with daemon, Client(endpoint=daemon.endpoint, timeout_ms=20_000) as client:
            daemon.start(timeout=30)
            for vnic_id, kind, path, mac in (
                ("veth1", MessageV0.Nic.NETNS, vm.name, "52:54:00:00:00:02"),
                ("vhost1", MessageV0.Nic.VHOST_USER_SERVER, "", "52:54:00:00:00:03"),
            ):
                request = MessageV0.Request()
                nic = request.nic_add
                nic.id, nic.mac, nic.vni, nic.type, nic.path = vnic_id, mac, 7, kind, path
                response = client.call(request).response
                assert response.status.status, response.status.error.description

            offered = not no_offload
            frontend = Frontend(os.path.join(site.folder, "qemu-vhost-vhost1"))
            try:
                frontend.negotiate()  # takes all that is offered, as QEMU does
                assert bool(frontend.features & OFFLOAD_FEATURES) is offered
                tap = site.netns.run(lambda: offloads("bf-vhost1"))
            finally:
                frontend.close()
            outside = site.netns.run(lambda: offloads("bf-veth1"))
            inside = vm.run(lambda: offloads("bf-veth1"))
            for port in (tap, outside, inside):
                assert port["tx-checksumming"] is offered
                assert port["tcp-segmentation-offload"] is offered
            workers = _workers(daemon.pid)
            assert workers
            everywhere = os.sched_getaffinity(0)
            wanted = {CPU} if no_offload else everywhere
            assert [os.sched_getaffinity(pid) for pid in workers] == [wanted] * len(workers)
    finally:
        vm.close()


@pytest.mark.parametrize("dpdk_args", [False, True])
def test_dpdk_args_iface_names_the_underlay_when_ip_does_not(site: Site, dpdk_args: bool) -> None:
    """Without -i, the --vdev's iface (eth0) is the underlay; without either,
    the default route's interface (eth1, the positive control) is."""
    options = ["--dpdk-args", "-c1 --vdev=eth_pcap0,iface=eth0"] if dpdk_args else []
    daemon = DaemonProcess(
        site.folder,
        netns=site.netns.name,
        dataplane=True,
        endpoint=f"ipc://{site.folder}/api.sock",
        extra_args=options,
    )
    with daemon, Client(endpoint=daemon.endpoint, timeout_ms=20_000) as client:
        daemon.start(timeout=30)
        request = MessageV0.Request()
        request.nic_add.id, request.nic_add.mac, request.nic_add.vni = "a", "52:54:00:00:00:0a", 9
        request.nic_add.type = MessageV0.Nic.TAP
        assert client.call(request).response.status.status
        expected = "local 192.168.0.1 dev eth0" if dpdk_args else "local 10.99.0.1 dev eth1"
        assert site.vxlan(9) == expected
        said = "option dpdk-args '-c1': accepted, and not applicable here"
        assert daemon.log().count(said) == (1 if dpdk_args else 0)


@pytest.mark.parametrize(
    ("argv", "ini", "message", "code"),
    [
        (["--tso-on"], None, "unrecognized arguments: --tso-on", 2),
        ([], "[general]\npid=/run/butterflyd.pid\n", "unknown option 'pid' in [general]", 1),
        (["--no-syslog", "-k", "/nonexistent/key"], None, "key file /nonexistent/key", 1),
        (["--dpdk-help"], None, "butterflyd has no DPDK", 0),
    ],
)
def test_each_refusal_is_said_once(
    tmp_path_factory: pytest.TempPathFactory,
    argv: list[str],
    ini: str | None,
    message: str,
    code: int,
) -> None:
    """Before and after logging is set up (the key is read after), on stderr or
    in the log on stderr, never both."""
    folder = tmp_path_factory.mktemp("refused")
    if ini is not None:
        (folder / "butterflyd.ini").write_text(ini)
        argv = [*argv, "-c", str(folder / "butterflyd.ini")]
    state = ["--no-dataplane", "--state", str(folder / "state.db"), "-s", str(folder)]
    ended = subprocess.run(
        [*butterflyd_command(), *state, *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ended.returncode == code
    assert (ended.stdout + ended.stderr).count(message) == 1, ended.stderr
