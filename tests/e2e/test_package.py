"""The Debian package of ``tools/deb``: installed, run, upgraded under traffic, removed.

The package is installed with dpkg into a root of the test's own (``dpkg
--root``, its maintainer scripts run outside a chroot with ``DPKG_ROOT``),
never into this machine's. Its commands run from there: the venv's Python
finds its packages relative to itself. The upgrade installs the next
revision while the installed daemon carries traffic between a namespace VM
and a QEMU guest on a tap, then restarts the daemon as the package's postinst
has systemd do (``try-restart``): not one ping may be lost. The wheel inside
holds the product alone: the lab and the benchmarks (``lab/``) stay out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from switch_helpers import BackgroundPing, open_sg

import butterfly_lab.daemon
from butterfly import __version__
from butterfly.dataplane.naming import tap_name
from butterfly_lab.guest import GuestFactory, TapNic
from butterfly_lab.lab import Lab

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
VENV = "usr/lib/butterfly/venv"
PINGS = 800  # 8 s at 10 ms: the upgrade and the restart happen in the first seconds


def _run(*argv: str | Path, timeout: float = 120) -> str:
    done = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Revision 1 as tools/deb builds it, and revision 2: the same files, the next version."""
    out = tmp_path_factory.mktemp("deb")
    first = Path(_run(REPO / "tools" / "deb", "--out", out, timeout=600).split()[-1])
    unpacked = out / "unpacked"
    _run("dpkg-deb", "-R", first, unpacked)
    control = unpacked / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(f"{__version__}-1", f"{__version__}-2"))
    second = out / f"butterfly_{__version__}-2_amd64.deb"
    _run("dpkg-deb", "--root-owner-group", "--build", unpacked, second)
    return first, second


class Root:
    """A dpkg root of its own (an empty database), outside this machine's packages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        for folder in ("info", "updates", "triggers"):
            (path / "var/lib/dpkg" / folder).mkdir(parents=True)
        for name in ("status", "available"):
            (path / "var/lib/dpkg" / name).touch()

    def dpkg(self, *argv: str | Path) -> str:
        return _run(
            "dpkg", f"--root={self.path}", "--force-script-chrootless", "--force-depends",
            "--force-confdef", "--force-confold", *argv,
        )  # fmt: skip

    def command(self, name: str) -> list[str]:
        """An installed command, run by the installed venv's Python."""
        return [str(self.path / VENV / "bin/python"), str(self.path / VENV / "bin" / name)]

    def files(self) -> set[str]:
        """Every file and link outside dpkg's own database."""
        return {
            str(p.relative_to(self.path))
            for p in self.path.rglob("*")
            if not p.is_dir() and "var/lib/dpkg" not in str(p)
        }


def test_the_wheel_holds_the_product_and_no_lab(tmp_path: Path) -> None:
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path, REPO)
    (wheel,) = tmp_path.glob("butterfly-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(f"butterfly-{__version__}.dist-info/entry_points.txt")
    packages = {name.split("/")[1] for name in names if name.startswith("butterfly/")}
    assert packages == {
        "__init__.py", "__main__.py", "errors.py", "py.typed",
        "api", "cli", "daemon", "dataplane", "model", "service", "store", "vhost",
    }  # fmt: skip
    assert {name.split("/")[0] for name in names} == {
        "butterfly",
        f"butterfly-{__version__}.dist-info",
    }
    assert not [name for name in names if "bench" in name or "lab" in name or "guest" in name]
    assert b"butterfly-bench" not in entry_points


@pytest.fixture
def root(tmp_path: Path) -> Root:
    return Root(tmp_path / "root")


def test_install_run_keep_the_conffile_on_upgrade_and_remove_cleanly(
    root: Root, packages: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = packages
    root.dpkg("-i", first)
    base = root.path
    assert os.readlink(base / "usr/bin/butterflyd") == "../lib/butterfly/venv/bin/butterflyd"
    assert (base / "usr/bin/butterfly").resolve() == base / VENV / "bin/butterfly"
    assert not (base / VENV / "bin/butterfly-bench").exists()
    unit = (base / "lib/systemd/system/butterflyd.service").read_text()
    assert unit == (REPO / "butterfly/daemon/data/butterflyd.service").read_text()
    assert "/etc/butterfly/butterflyd.ini" in root.dpkg("-s", "butterfly")  # a conffile
    assert oct((base / "var/lib/butterfly").stat().st_mode & 0o777) == "0o750"
    # --version of both commands is the package's
    assert _run(*root.command("butterflyd"), "--version").strip() == f"butterflyd {__version__}"
    assert __version__ in _run(*root.command("butterfly"), "--version")
    # the installed commands work: a daemon (control plane only) and the CLI against it
    endpoint = f"ipc://{tmp_path}/api.sock"
    daemon = subprocess.Popen(
        [*root.command("butterflyd"), "--no-dataplane", "--no-syslog", "-e", endpoint,
         "--state", str(tmp_path / "state.db"), "-s", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        cli = [*root.command("butterfly"), "-e", endpoint, "-t", "20000"]
        _run(*cli, "nic", "add", "--id", "pkg", "--mac", "52:54:00:00:90:09", "--vni", "9")
        assert _run(*cli, "nic", "list").split() == ["pkg"]
    finally:
        daemon.terminate()
        daemon.wait(10)
    # an upgrade keeps the operator's ini file
    ini = base / "etc/butterfly/butterflyd.ini"
    ini.write_text(ini.read_text().replace("log-level = info", "log-level = debug"))
    installed = root.files()
    root.dpkg("-i", second)
    assert f"Version: {__version__}-2" in root.dpkg("-s", "butterfly")
    assert "log-level = debug" in ini.read_text()
    assert root.files() == installed
    # remove leaves the conffile and nothing else; purge leaves nothing
    (base / "var/lib/butterfly/state.db").write_text("state")
    root.dpkg("-r", "butterfly")
    assert root.files() == {"etc/butterfly/butterflyd.ini", "var/lib/butterfly/state.db"}
    root.dpkg("-P", "butterfly")
    assert root.files() == set()
    assert not (base / "var/lib/butterfly").exists()
    assert not (base / "usr/lib/butterfly").exists()


@pytest.fixture
def installed_daemon(
    root: Root, packages: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Root]:
    """Lab hosts made meanwhile run the package's butterflyd."""
    root.dpkg("-i", packages[0])
    command = root.command("butterflyd")
    monkeypatch.setattr(butterfly_lab.daemon, "butterflyd_command", lambda: command)
    yield root


@pytest.mark.qemu
def test_an_upgrade_under_traffic_loses_no_packet(
    installed_daemon: Root, packages: tuple[Path, Path], lab: Lab, guests: GuestFactory
) -> None:
    root = installed_daemon
    host = lab.host()
    assert host.daemon.command()[4:6] == root.command("butterflyd")  # after ip netns exec NS
    open_sg(host)
    one, two = lab.vm(), lab.vm()
    host.add_vnic("one", vm=one, mac="52:54:00:00:91:01", vni=910, ips=["10.91.0.1"],
                  security_groups=["open"])  # fmt: skip
    host.add_vnic("two", vm=two, mac="52:54:00:00:91:02", vni=910, ips=["10.91.0.2"],
                  security_groups=["open"])  # fmt: skip
    host.add_vnic("qemu", mac="52:54:00:00:91:03", vni=910, ips=["10.91.0.3"],
                  security_groups=["open"])  # fmt: skip
    guest = guests.create(
        f"bfl{os.getpid()}u",
        nic=TapNic(tap_name("qemu"), mac="52:54:00:00:91:03"),
        ipv4="10.91.0.3/24",
        netns=host.name,
    )
    guest.boot()
    guest.check("ping -c 1 -W 2 10.91.0.1", timeout=20)
    to_netns = BackgroundPing(one, "10.91.0.2", interval=0.01, count=PINGS)
    to_tap = BackgroundPing(two, "10.91.0.3", interval=0.01, count=PINGS)
    to_netns.wait_replies(50)
    to_tap.wait_replies(50)
    old = host.daemon.pid
    root.dpkg("-i", packages[1])  # the files change under the running daemon
    assert f"Version: {__version__}-2" in root.dpkg("-s", "butterfly")
    host.restart()  # what postinst has systemd do: try-restart
    assert host.daemon.pid != old
    assert host.cli("nic", "list").split() == ["one", "qemu", "two"]
    assert to_netns.running() and to_tap.running(), "the traffic ended too soon"
    for ping in (to_netns, to_tap):
        transmitted, received, output = ping.wait()
        assert (transmitted, received) == (PINGS, PINGS), output
