"""Real QEMU guests for tests and benchmarks: the image they boot and the process that runs them.

This module owns two things:

* the guest *image*: Debian's own ``linux-image-6.1.*-amd64`` kernel (fetched with
  ``apt-get download``, never installed on the host) turned into an ELF ``vmlinux`` that
  QEMU boots through its PVH note, and an initramfs holding busybox-static, the virtio-net
  modules, iperf3 and an ``/init`` that configures ``eth0`` from the kernel command line
  and then serves a shell on the serial console. Images are cached on disk, keyed by the
  versions of everything that goes into them, so only the first run pays for a build;
* the *guest*: one QEMU process attached through a tap or a vhost-user socket, driven over
  its serial console (``run`` returns the exit code and output of a shell command), and
  killed by pid when done.

Typical use (the fixtures in tests/e2e/conftest.py do the image and the clean-up)::

    image = build_image()                      # cached: ~0.5 s, cold: ~4 s
    a = Guest(image, name="a", nic=TapNic("tap0"), ipv4="192.0.2.1/24", netns="ns")
    b = Guest(image, name="b", nic=VhostUserNic(Path("/run/vhu.sock")), ipv4="192.0.2.2/24")
    with a, b:
        boot_all([a, b])                       # in parallel
        code, output = a.run("ping -c 1 192.0.2.2", timeout=10)
        b.check("iperf3 -s -D")                # raises GuestCommandError unless exit 0

Booting the uncompressed kernel under TCG reaches a shell in about two seconds, so a test
can afford real guests, several in parallel. The module uses the standard library only, so
``tools/guest-image`` runs it with any Python 3.11, and it imports nothing from butterfly:
it is what the tests use to look at butterfly from the outside.

Exceptions::

    GuestError
     +-- ImageBuildError        the image could not be built (tool missing, apt failed...)
     +-- GuestBootError         QEMU exited or the guest did not come up in time
     +-- GuestCommandError      a command run through check() exited non-zero
     +-- GuestCommandTimeout    a command did not finish in time (it was interrupted)
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import fcntl
import gzip
import hashlib
import ipaddress
import json
import logging
import lzma
import os
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DEFAULT_RUN_DIR",
    "MODULES",
    "Guest",
    "GuestBootError",
    "GuestCommandError",
    "GuestCommandTimeout",
    "GuestError",
    "GuestFactory",
    "GuestImage",
    "GuestState",
    "ImageBuildError",
    "TapNic",
    "VhostUserNic",
    "boot_all",
    "build_image",
    "mac_for",
    "reap_orphans",
    "vmlinux_from_bzimage",
]

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR: Final = Path("/var/cache/butterfly-tests/guest")
# Short on purpose: a unix socket path must fit in 108 bytes.
DEFAULT_RUN_DIR: Final = Path("/tmp/butterfly-guests")

# Load order matters: each module needs the symbols of the ones before it.
MODULES: Final = (
    "failover",
    "net_failover",
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_net",
)

KERNEL_APPEND: Final = "console=ttyS0 panic=-1 quiet mitigations=off tsc=reliable no_timer_check"

# Bump when the image layout changes in a way the init script's hash does not show.
_IMAGE_FORMAT: Final = 1
_KERNEL_META_PACKAGE: Final = "linux-image-amd64"
_KERNEL_PACKAGE_RE: Final = re.compile(r"linux-image-6\.1\.[0-9.]+-[0-9]+-amd64")
_HOST_PACKAGES: Final = ("busybox-static", "iperf3", "libiperf0")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")
_MAC_RE: Final = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_SUN_PATH_MAX: Final = 107

# The guest's PID 1. It prints `:bfg:ready:<status>:` once the network is configured,
# then serves an interactive shell (for job control, so ^C interrupts a command that
# timed out) with echo and prompts off, so that the console carries only what commands
# print. Kernel messages are silenced for the same reason.
INIT_SCRIPT: Final = """\
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /root
mount -t devpts devpts /dev/pts
dmesg -n 1
status=ok
for m in @MODULES@; do
    insmod /lib/modules/$m.ko || status="insmod-$m"
done
name=guest ip4= ip6=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        bfg.name=*) name="${arg#bfg.name=}" ;;
        bfg.ip=*) ip4="${arg#bfg.ip=}" ;;
        bfg.ip6=*) ip6="${arg#bfg.ip6=}" ;;
    esac
done
hostname "$name"
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up || status=eth0-up
    if [ -n "$ip4" ]; then ip addr add "$ip4" dev eth0 || status=eth0-ip; fi
    if [ -n "$ip6" ]; then
        # No duplicate address detection: the address is usable at once (busybox ip
        # knows no "nodad").
        echo 0 >/proc/sys/net/ipv6/conf/eth0/accept_dad
        ip -6 addr add "$ip6" dev eth0 || status=eth0-ip6
    fi
elif [ -n "$ip4$ip6" ]; then
    status=no-eth0
fi
stty -echo -F /dev/ttyS0
echo ":bfg:ready:$status:"
export PS1= PS2= ENV=
while :; do setsid cttyhack sh; done
""".replace("@MODULES@", " ".join(MODULES))


class GuestError(Exception):
    """Base of every error raised by this module."""


class ImageBuildError(GuestError):
    """The guest image could not be built."""


class GuestBootError(GuestError):
    """QEMU exited, or the guest did not reach its shell in time."""


class GuestCommandError(GuestError):
    """A command run through `Guest.check` exited non-zero."""

    def __init__(self, message: str, *, exit_code: int, output: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output


class GuestCommandTimeout(GuestError):
    """A command did not finish in time; it was interrupted with ^C."""

    def __init__(self, message: str, *, output: str) -> None:
        super().__init__(message)
        self.output = output


# --------------------------------------------------------------------------- image


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """A built image: what QEMU's -kernel and -initrd take, plus how it was made."""

    kernel: Path
    initrd: Path
    manifest: dict[str, str]

    @property
    def directory(self) -> Path:
        return self.kernel.parent


def build_image(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    *,
    kernel_package: str | None = None,
    force: bool = False,
    compress: bool = False,
) -> GuestImage:
    """Return the cached image for the current package versions, building it if missing.

    `kernel_package` pins ``NAME`` or ``NAME=VERSION``; by default the kernel that
    Debian's ``linux-image-amd64`` currently depends on. An uncompressed initramfs boots
    faster under TCG (the guest does not gunzip it), so `compress` is off by default.
    Concurrent builders (parallel test runs) serialise on a lock file; the loser of the race
    finds the winner's image.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    host = _host_inputs()
    try:
        kpkg, kver = _resolve_kernel(kernel_package)
    except ImageBuildError:
        # Offline and no package lists: any image built before is better than none.
        cached = _newest_cached(cache_dir)
        if cached is None:
            raise
        log.warning("cannot resolve the kernel package; using cached %s", cached.directory)
        return cached
    recipe = {
        "format": str(_IMAGE_FORMAT),
        "kernel_package": kpkg,
        "kernel_version": kver,
        "compressed": str(compress),
        "init_sha256": hashlib.sha256(INIT_SCRIPT.encode()).hexdigest(),
        **{f"host:{k}": v for k, v in host.versions.items()},
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir / f"{kpkg}_{kver.replace(':', '%')}_{digest}"
    with _locked(cache_dir / ".lock"):
        if target.is_dir() and not force:
            (target / "manifest.json").touch()  # marks it used, for _prune
            return _load_image(target)
        _prune(cache_dir)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
            work = Path(tmp)
            out = work / "image"
            out.mkdir()
            vmlinux, modules = _fetch_kernel(kpkg, kver, work)
            (out / "vmlinux").write_bytes(vmlinux)
            initrd_name = "initrd.cpio.gz" if compress else "initrd.cpio"
            cpio = _initramfs(modules, host)
            (out / initrd_name).write_bytes(gzip.compress(cpio, 6) if compress else cpio)
            manifest = {
                **recipe,
                "kernel": "vmlinux",
                "initrd": initrd_name,
                "built_seconds": f"{time.monotonic() - started:.2f}",
            }
            (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)
        log.info("built guest image %s in %s s", target, manifest["built_seconds"])
        return _load_image(target)


def _prune(cache_dir: Path, unused_days: float = 14.0) -> None:
    """Drop images nobody used for a while (old kernels) and builds that were killed.

    Runs under the cache lock, so no build in progress is touched.
    """
    now = time.time()
    for d in cache_dir.iterdir():
        if d.name.startswith(".build-"):
            shutil.rmtree(d, ignore_errors=True)
        elif d.name.startswith("linux-image-") and d.is_dir():
            manifest = d / "manifest.json"
            used = manifest.stat().st_mtime if manifest.exists() else 0.0
            if now - used > unused_days * 86400:
                shutil.rmtree(d, ignore_errors=True)


def _load_image(directory: Path) -> GuestImage:
    manifest = json.loads((directory / "manifest.json").read_text())
    return GuestImage(
        kernel=directory / manifest["kernel"],
        initrd=directory / manifest["initrd"],
        manifest=manifest,
    )


def _newest_cached(cache_dir: Path) -> GuestImage | None:
    built = sorted(
        (d for d in cache_dir.glob("linux-image-*") if (d / "manifest.json").is_file()),
        key=lambda d: d.stat().st_mtime,
    )
    return _load_image(built[-1]) if built else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _command(argv: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    """Run a host tool for the image build, translating failures to ImageBuildError."""
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ImageBuildError(f"{what}: {' '.join(argv)}: {e}") from e
    if done.returncode != 0:
        raise ImageBuildError(
            f"{what}: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return done.stdout


def _resolve_kernel(pin: str | None) -> tuple[str, str]:
    """Name and version of the kernel package to boot, from apt's package lists."""
    if pin is not None:
        name, _, version = pin.partition("=")
        if not _KERNEL_PACKAGE_RE.fullmatch(name):
            raise ImageBuildError(f"kernel package {name!r} is not linux-image-6.1.*-amd64")
        if version:
            return name, version
        return name, _apt_field(name, "Version")
    depends = _apt_field(_KERNEL_META_PACKAGE, "Depends")
    m = re.match(r"\s*(linux-image-\S+)\s*\(=\s*([^)\s]+)\)", depends)
    if m is None or not _KERNEL_PACKAGE_RE.fullmatch(m.group(1)):
        raise ImageBuildError(f"{_KERNEL_META_PACKAGE}: unexpected Depends {depends!r}")
    return m.group(1), m.group(2)


def _apt_field(package: str, field: str) -> str:
    """One field of a package's candidate version; runs `apt-get update` once if needed."""
    argv = ["apt-cache", "show", "--no-all-versions", package]
    for attempt in range(2):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        m = re.search(rf"^{field}: (.*)$", done.stdout, re.MULTILINE)
        if done.returncode == 0 and m is not None:
            return m.group(1).strip()
        if attempt == 0:
            log.info("apt-cache knows no %s; running apt-get update", package)
            _command(["apt-get", "update", "-q"], what="apt-get update")
    raise ImageBuildError(f"apt-cache show {package}: no {field} field")


@dataclasses.dataclass(frozen=True)
class _HostInputs:
    """Host files copied into the initramfs, with the package versions they come from."""

    busybox: Path
    busybox_applets: tuple[str, ...]
    iperf3: Path
    libraries: tuple[Path, ...]
    versions: dict[str, str]


def _host_inputs() -> _HostInputs:
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    iperf3 = Path(shutil.which("iperf3") or "/usr/bin/iperf3")
    missing = [p for p in (busybox, iperf3) if not p.is_file()]
    if missing:
        raise ImageBuildError(
            f"missing {', '.join(map(str, missing))}: apt-get install busybox-static iperf3"
        )
    if _elf_interpreter(busybox.read_bytes()) is not None:
        raise ImageBuildError(f"{busybox} is dynamically linked: apt-get install busybox-static")
    applets = tuple(_command([str(busybox), "--list-full"], what="busybox applets").split())
    versions: dict[str, str] = {}
    out = _command(
        ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n", *_HOST_PACKAGES],
        what="host package versions",
    )
    for line in out.splitlines():
        pkg, version, abbrev = [*line.split(" ", 2), "", ""][:3]
        if abbrev.startswith("ii"):
            versions[pkg] = version
    return _HostInputs(
        busybox=busybox,
        busybox_applets=applets,
        iperf3=iperf3,
        libraries=_shared_libraries(iperf3),
        versions=versions,
    )


def _elf_interpreter(elf: bytes) -> bytes | None:
    """PT_INTERP of a 64-bit little-endian ELF, or None for a static binary."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ImageBuildError("not a 64-bit ELF file")
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        if p_type == 3:  # PT_INTERP
            return elf[p_offset : p_offset + p_filesz].rstrip(b"\0")
    return None


def _shared_libraries(binary: Path) -> tuple[Path, ...]:
    """What the dynamic loader maps for `binary`, as the paths it asks for (ldd's view)."""
    out = _command(["ldd", str(binary)], what=f"ldd {binary}")
    libs: list[Path] = []
    for line in out.splitlines():
        m = re.match(r"\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x", line)
        if m is not None:
            libs.append(Path(m.group(1)))
    if not any(p.name.startswith("ld-linux") for p in libs):
        raise ImageBuildError(f"ldd {binary}: no dynamic loader in {out!r}")
    return tuple(libs)


def _fetch_kernel(package: str, version: str, work: Path) -> tuple[bytes, dict[str, bytes]]:
    """Download the kernel package and take the vmlinux and the modules out of it.

    The package's file system is streamed out of ``dpkg-deb --fsys-tarfile`` and only the
    few members needed are kept: unpacking all of it (``dpkg-deb -x``) writes 400 MB.
    """
    _command(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
        cwd=work,
        what=f"download {package}",
    )
    debs = list(work.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise ImageBuildError(f"download {package}: expected one .deb in {work}, got {debs}")
    wanted = {f"{m}.ko{ext}": m for m in MODULES for ext in ("", ".xz", ".gz")}
    modules: dict[str, bytes] = {}
    bzimage: bytes | None = None
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(debs[0])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile():
                    continue
                if re.fullmatch(r"\./boot/vmlinuz-.*", member.name):
                    bzimage = _read_member(tar, member)
                elif base in wanted and "/kernel/" in member.name:
                    modules[wanted[base]] = _decompress_module(base, _read_member(tar, member))
        proc.stdout.read()
        err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise ImageBuildError(f"dpkg-deb --fsys-tarfile {debs[0].name}: {err.strip()}")
    if bzimage is None:
        raise ImageBuildError(f"{package}: no /boot/vmlinuz-* in the package")
    missing = [m for m in MODULES if m not in modules]
    if missing:
        raise ImageBuildError(f"{package}: modules {missing} not found (built in?)")
    debs[0].unlink()
    return vmlinux_from_bzimage(bzimage), modules


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise ImageBuildError(f"cannot read {member.name} from the kernel package")
    with f:
        return f.read()


def _decompress_module(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage, which QEMU boots directly through its PVH note.

    The setup header's payload_offset/payload_length (at 0x248) locate the compressed
    kernel after the real-mode setup sectors; Debian compresses it with xz.
    """
    if bzimage[0x202:0x206] != b"HdrS":
        raise ImageBuildError("vmlinuz: no bzImage setup header")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    if not payload.startswith(b"\xfd7zXZ\x00"):
        raise ImageBuildError(f"vmlinuz: payload is not xz (starts {payload[:6]!r})")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        elf = decompressor.decompress(payload)
    except lzma.LZMAError as e:
        raise ImageBuildError(f"vmlinuz: bad xz payload: {e}") from e
    if not elf.startswith(b"\x7fELF"):
        raise ImageBuildError("vmlinuz: payload is not an ELF kernel")
    return elf


class _Cpio:
    """A cpio archive in the "newc" format, the one the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 0x1000
        self._dirs: set[str] = {""}

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        # namesize check
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        self._parts += [header, encoded, _pad4(len(header) + len(encoded)), data, _pad4(len(data))]

    def directory(self, name: str) -> None:
        """Add `name` and its missing parents: the kernel's unpacker creates no parents."""
        parent = name.rpartition("/")[0]
        if parent not in self._dirs:
            self.directory(parent)
        if name not in self._dirs:
            self._dirs.add(name)
            self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self.directory(name.rpartition("/")[0])
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self.directory(name.rpartition("/")[0])
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self.directory(name.rpartition("/")[0])
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def getvalue(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = b"".join(self._parts)
        return data + _pad(len(data), 512)


def _pad4(n: int) -> bytes:
    return _pad(n, 4)


def _pad(n: int, align: int) -> bytes:
    return b"\0" * (-n % align)


def _initramfs(modules: dict[str, bytes], host: _HostInputs) -> bytes:
    cpio = _Cpio()
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc", "lib64", "usr/bin", "usr/sbin"):
        cpio.directory(d)
    # The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
    cpio.chardev("dev/console", 5, 1)
    cpio.file("init", INIT_SCRIPT.encode())
    cpio.file("bin/busybox", host.busybox.read_bytes())
    for applet in host.busybox_applets:
        if applet != "bin/busybox":
            cpio.symlink(applet, "/bin/busybox")
    cpio.file("usr/bin/iperf3", host.iperf3.read_bytes())
    for lib in host.libraries:
        cpio.file(str(lib).lstrip("/"), lib.read_bytes())
    for name in MODULES:
        cpio.file(f"lib/modules/{name}.ko", modules[name], 0o644)
    cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
    cpio.file("etc/group", b"root:x:0:\n", 0o644)
    return cpio.getvalue()


# --------------------------------------------------------------------------- guest


@dataclasses.dataclass(frozen=True)
class TapNic:
    """Attach eth0 to an existing tap device (in the namespace QEMU runs in)."""

    ifname: str
    mac: str | None = None


@dataclasses.dataclass(frozen=True)
class VhostUserNic:
    """Attach eth0 to a vhost-user backend listening on `socket`.

    With `reconnect` QEMU reconnects by itself (every `reconnect` seconds) when the
    backend restarts; QEMU does not start the guest until the backend answers.
    """

    socket: Path
    mac: str | None = None
    reconnect: int = 1


class GuestState(enum.Enum):
    NEW = "new"
    BOOTING = "booting"
    READY = "ready"
    STOPPED = "stopped"
    CLOSED = "closed"


def mac_for(name: str) -> str:
    """A locally administered MAC derived from `name`, stable across runs for debugging."""
    tail = hashlib.sha256(name.encode()).digest()[:3]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


class Guest:
    """One QEMU guest driven over its serial console.

    ``start`` spawns QEMU and returns at once, so several guests boot in parallel:
    start them all, then ``wait_ready`` each. QEMU connects to a unix socket this object
    listens on, so not a byte of the console is lost before we read it. Everything the
    guest creates on the host lives in its own run directory (console socket and log,
    QEMU's log, pid files), removed by ``close``.
    """

    def __init__(
        self,
        image: GuestImage,
        *,
        name: str,
        nic: TapNic | VhostUserNic | None = None,
        ipv4: str | None = None,
        ipv6: str | None = None,
        netns: str | None = None,
        memory_mb: int = 128,
        run_dir: Path = DEFAULT_RUN_DIR,
        qemu: str = "qemu-system-x86_64",
        extra_append: Sequence[str] = (),
        extra_qemu_args: Sequence[str] = (),
    ) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"guest {name!r}: name must match {_NAME_RE.pattern}")
        self.name = name
        self.image = image
        self.nic = nic
        self.ipv4 = None if ipv4 is None else str(_ipv4(name, ipv4))
        self.ipv6 = None if ipv6 is None else str(_ipv6(name, ipv6))
        self.mac = _valid_mac(name, (nic.mac if nic else None) or mac_for(name))
        if isinstance(nic, TapNic) and not 0 < len(nic.ifname) <= 15:
            raise ValueError(f"guest {name}: tap ifname {nic.ifname!r} is not 1-15 characters")
        if memory_mb < 96:
            raise ValueError(f"guest {name}: memory_mb {memory_mb} is below 96")
        self.netns = netns
        self.memory_mb = memory_mb
        self.qemu = qemu
        self.extra_append = tuple(extra_append)
        self.extra_qemu_args = tuple(extra_qemu_args)
        # mkdtemp adds "-" and 8 characters to the prefix.
        if len(f"{run_dir}/{name}-12345678/console.sock") > _SUN_PATH_MAX:
            raise ValueError(f"guest {name}: run_dir {run_dir} makes socket paths too long")
        if not run_dir.exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            # Shared by every user's test runs, like /tmp.
            with contextlib.suppress(OSError):
                run_dir.chmod(0o1777)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=run_dir))
        (self.workdir / "owner.pid").write_text(f"{os.getpid()}\n")
        self.state = GuestState.NEW
        self.boot_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._listener: socket.socket | None = None
        self._console: socket.socket | None = None
        self._log: IO[bytes] | None = None
        self._buf = bytearray()
        self._started_at = 0.0
        self._lock = threading.Lock()

    # -- paths and the command line

    @property
    def console_socket(self) -> Path:
        return self.workdir / "console.sock"

    @property
    def console_log(self) -> Path:
        """Everything the serial console printed, across restarts: read it on failure."""
        return self.workdir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    @property
    def pid(self) -> int | None:
        """QEMU's pid while it runs (``ip netns exec`` execs QEMU in place)."""
        return self._proc.pid if self._proc is not None else None

    def kernel_append(self) -> str:
        parts = [KERNEL_APPEND, f"bfg.name={self.name}"]
        if self.ipv4:
            parts.append(f"bfg.ip={self.ipv4}")
        if self.ipv6:
            parts.append(f"bfg.ip6={self.ipv6}")
        return " ".join([*parts, *self.extra_append])

    def argv(self) -> list[str]:
        """The full command line, ``ip netns exec`` included: public so tests can check it."""
        argv = [
            self.qemu, "-name", self.name,
            "-accel", "tcg", "-m", str(self.memory_mb), "-smp", "1",
            "-display", "none", "-nodefaults", "-no-reboot",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", self.kernel_append(),
            "-chardev", f"socket,id=ser0,path={_opt(self.console_socket)}",
            "-serial", "chardev:ser0",
        ]  # fmt: skip
        nic = self.nic
        if isinstance(nic, TapNic):
            argv += [
                "-netdev", f"tap,id=n0,ifname={_opt(nic.ifname)},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
            ]  # fmt: skip
        elif isinstance(nic, VhostUserNic):
            # vectors=0: QEMU 7.2 under TCG crashes when the driver starts a vhost-user
            # device with MSI-X vectors.
            argv += [
                "-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on",
                "-numa", "node,memdev=mem",
                "-chardev", f"socket,id=c0,path={_opt(nic.socket)},reconnect={nic.reconnect}",
                "-netdev", "vhost-user,id=n0,chardev=c0",
                "-device", f"virtio-net-pci,netdev=n0,vectors=0,mac={self.mac}",
            ]  # fmt: skip
        argv += self.extra_qemu_args
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    # -- lifecycle

    def start(self) -> None:
        """Spawn QEMU without waiting for the guest: call `wait_ready` next."""
        if self.state not in (GuestState.NEW, GuestState.STOPPED):
            raise GuestError(f"guest {self.name}: cannot start while {self.state.value}")
        self.console_socket.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.console_socket))
        listener.listen(1)
        self._listener = listener
        self._log = self.console_log.open("ab")
        self._buf.clear()
        self._started_at = time.monotonic()
        with self.qemu_log.open("ab") as qlog:
            try:
                self._proc = subprocess.Popen(
                    self.argv(), stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog
                )
            except OSError as e:
                self._teardown()
                raise GuestBootError(f"guest {self.name}: cannot run {self.qemu}: {e}") from e
        (self.workdir / "qemu.pid").write_text(f"{self._proc.pid}\n")
        self.state = GuestState.BOOTING

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until /init has configured the network and the shell answers."""
        if self.state is GuestState.READY:
            return
        if self.state is not GuestState.BOOTING:
            raise GuestError(f"guest {self.name}: wait_ready while {self.state.value}")
        deadline = time.monotonic() + timeout
        try:
            self._accept(deadline)
            m = self._read_until(re.compile(rb":bfg:ready:([^:\r\n]*):"), deadline)
            status = bytes(m.group(1))
            del self._buf[: m.end()]
            if status != b"ok":
                raise GuestBootError(
                    f"guest {self.name}: /init failed: {status.decode()}{self._tail()}"
                )
            self.state = GuestState.READY
            self._sync(deadline)
        except GuestError:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - self._started_at

    def boot(self, timeout: float = 60.0) -> Self:
        self.start()
        self.wait_ready(timeout)
        return self

    def restart(self, timeout: float = 60.0) -> None:
        """Power-cycle: a fresh QEMU on the same run directory (a boot is ~2 s)."""
        self.stop()
        self.boot(timeout)

    def stop(self) -> None:
        """Kill this guest's QEMU (by pid) and close its console; the guest can start again."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)
        self._teardown()
        if self.state in (GuestState.BOOTING, GuestState.READY):
            self.state = GuestState.STOPPED

    def close(self) -> None:
        """Stop the guest and remove its run directory. Safe to call twice."""
        if self.state is GuestState.CLOSED:
            return
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.state = GuestState.CLOSED

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Guest {self.name} {self.state.value} pid={self.pid}>"

    # -- commands

    def run(self, command: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run a shell command in the guest; return its exit code and stdout+stderr.

        The command runs in a subshell (``exit`` is fine, ``cd`` does not persist) with
        stdin from /dev/null. Output is delimited by markers that never appear literally in
        what we send, so echo, stray output and kernel messages cannot be mistaken for it.
        On timeout the command is interrupted with ^C and GuestCommandTimeout is raised;
        the guest stays usable.
        """
        with self._lock:
            if self.state is not GuestState.READY:
                raise GuestError(f"guest {self.name}: run while {self.state.value}")
            deadline = time.monotonic() + timeout
            token = secrets.token_hex(6)
            script = _b64(command)
            tmp = f"/tmp/.bfg-{token}"
            lines = [f"printf %s {chunk} >>{tmp}" for chunk in _chunks(script, 2048)]
            lines.append(
                f"printf ':bfg:%s:s:\\n' {token}; "
                f'( eval "$(base64 -d {tmp}; rm -f {tmp})" ) </dev/null 2>&1; '
                f"printf ':bfg:%s:e:%d:\\n' {token} $?"
            )
            for line in lines:
                self._send(line.encode() + b"\n")
            start = re.compile(rb":bfg:" + token.encode() + rb":s:\r?\n")
            end = re.compile(rb":bfg:" + token.encode() + rb":e:(\d+):")
            try:
                m0 = self._read_until(start, deadline)
                del self._buf[: m0.end()]
                m1 = self._read_until(end, deadline)
            except _Deadline:
                output = _text(self._buf)
                self._interrupt()
                raise GuestCommandTimeout(
                    f"guest {self.name}: {command!r} did not finish in {timeout} s",
                    output=output,
                ) from None
            # Read the match before trimming: it views the (mutable) buffer.
            code, output = int(m1.group(1)), _text(self._buf[: m1.start()])
            del self._buf[: m1.end()]
            return code, output

    def check(self, command: str, timeout: float = 30.0) -> str:
        """`run`, raising GuestCommandError unless the command exits 0; returns the output."""
        code, output = self.run(command, timeout)
        if code != 0:
            raise GuestCommandError(
                f"guest {self.name}: {command!r} exited {code}: {output.strip()[-2000:]}",
                exit_code=code,
                output=output,
            )
        return output

    # -- console plumbing

    def _accept(self, deadline: float) -> None:
        assert self._listener is not None
        while True:
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if ready:
                conn, _ = self._listener.accept()
                conn.setblocking(False)
                self._console = conn
                self._listener.close()
                self._listener = None
                return
            self._check_alive()
            if time.monotonic() > deadline:
                raise GuestBootError(f"guest {self.name}: QEMU never connected its console")

    def _check_alive(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            code = None if proc is None else proc.returncode
            raise GuestBootError(f"guest {self.name}: QEMU exited ({code}){self._tail()}")

    def _read_until(self, pattern: re.Pattern[bytes], deadline: float) -> re.Match[bytes]:
        """Read the console into the buffer until `pattern` matches in it."""
        assert self._console is not None
        scanned = 0
        while True:
            # Markers are short: a match can only start shortly before the new bytes.
            m = pattern.search(self._buf, max(0, scanned - 64))
            if m is not None:
                return m
            scanned = len(self._buf)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if self.state is GuestState.BOOTING:
                    raise GuestBootError(f"guest {self.name}: not ready in time{self._tail()}")
                raise _Deadline
            ready, _, _ = select.select([self._console], [], [], min(remaining, 0.5))
            if not ready:
                self._check_alive()
                continue
            try:
                data = self._console.recv(65536)
            except OSError as e:
                raise GuestError(f"guest {self.name}: console: {e}") from e
            if not data:
                self._check_alive()
                raise GuestError(f"guest {self.name}: console closed{self._tail()}")
            if self._log is not None:
                self._log.write(data)
                self._log.flush()
            self._buf += data

    def _send(self, data: bytes) -> None:
        assert self._console is not None
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self._console], [], 5.0)
            if not writable:
                raise GuestError(f"guest {self.name}: console does not take input")
            sent = self._console.send(view)
            view = view[sent:]

    def _sync(self, deadline: float) -> None:
        """Prove the shell answers, and drop whatever it printed before.

        Asks more than once: a ^C just before makes the tty discard input it has not yet
        read, and a guest under load may take its time to act on the ^C.
        """
        tokens: list[bytes] = []
        wait = 0.5
        while True:
            tokens.append(secrets.token_hex(6).encode())
            self._send(b"printf ':bfg:%s:y:\\n' " + tokens[-1] + b"\n")
            pattern = re.compile(rb":bfg:(?:" + b"|".join(tokens) + rb"):y:")
            try:
                m = self._read_until(pattern, min(deadline, time.monotonic() + wait))
            except _Deadline:
                if time.monotonic() >= deadline:
                    raise GuestError(
                        f"guest {self.name}: shell does not answer{self._tail()}"
                    ) from None
                wait *= 2
                continue
            del self._buf[: m.end()]
            return

    def _interrupt(self) -> None:
        """^C the command that timed out, then resynchronise with the shell."""
        self._send(b"\x03")
        try:
            self._sync(time.monotonic() + 10.0)
        except GuestError:
            self.stop()
            raise

    def _teardown(self) -> None:
        for sock in (self._console, self._listener):
            if sock is not None:
                sock.close()
        self._console = self._listener = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self.console_socket.unlink(missing_ok=True)

    def _tail(self, lines: int = 15) -> str:
        """The end of QEMU's and the console's logs, to make a boot failure self-explaining."""
        parts = []
        for path in (self.qemu_log, self.console_log):
            with contextlib.suppress(OSError):
                text = path.read_bytes()[-4000:].decode(errors="replace")
                text = "\n".join(text.replace("\r", "").splitlines()[-lines:])
                if text.strip():
                    parts.append(f"\n--- {path.name} ---\n{text}")
        return "".join(parts)


class GuestFactory:
    """The guests of one test (the `guests` fixture): closed together at teardown, so a
    failing test leaks none."""

    def __init__(self, image: GuestImage) -> None:
        self.image = image
        self.created: list[Guest] = []

    def create(self, name: str, **kwargs: Any) -> Guest:
        """A new Guest on this factory's image; `kwargs` as for `Guest`."""
        guest = Guest(self.image, name=name, **kwargs)
        self.created.append(guest)
        return guest

    def boot(self, *guests: Guest, timeout: float = 60.0) -> None:
        boot_all(guests, timeout)

    def close(self) -> None:
        for guest in reversed(self.created):
            guest.close()


def boot_all(guests: Iterable[Guest], timeout: float = 60.0) -> None:
    """Boot guests in parallel: QEMU runs on its own, so start all, then wait for each."""
    pending = list(guests)
    for g in pending:
        g.start()
    deadline = time.monotonic() + timeout
    for g in pending:
        g.wait_ready(max(0.1, deadline - time.monotonic()))


class _Deadline(Exception):
    """A command's deadline passed (internal: run() turns it into GuestCommandTimeout)."""


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _opt(value: object) -> str:
    """A value inside a QEMU option list, where a comma is written as two."""
    return str(value).replace(",", ",,")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _chunks(text: str, size: int) -> Iterable[str]:
    return (text[i : i + size] for i in range(0, len(text), size))


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode(errors="replace").replace("\r\n", "\n")


def _ipv4(guest: str, value: str) -> ipaddress.IPv4Interface:
    try:
        return ipaddress.IPv4Interface(value)
    except ValueError as e:
        raise ValueError(f"guest {guest}: ipv4 {value!r} is not an address/prefix: {e}") from e


def _ipv6(guest: str, value: str) -> ipaddress.IPv6Interface:
    try:
        return ipaddress.IPv6Interface(value)
    except ValueError as e:
        raise ValueError(f"guest {guest}: ipv6 {value!r} is not an address/prefix: {e}") from e


def _valid_mac(guest: str, mac: str) -> str:
    mac = mac.lower()
    if not _MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1:
        raise ValueError(f"guest {guest}: mac {mac!r} is not a unicast MAC (six hex pairs)")
    return mac


# --------------------------------------------------------------------------- orphans


def reap_orphans(run_dir: Path = DEFAULT_RUN_DIR) -> list[int]:
    """Kill QEMUs left behind by test processes that died (SIGKILL, crash) and clean up.

    Only guests whose owner process is gone are touched, and a pid is killed only if its
    command line still names that guest's run directory, so concurrent test runs and
    recycled pids are safe. Returns the pids killed.
    """
    killed: list[int] = []
    if not run_dir.is_dir():
        return killed
    for workdir in run_dir.iterdir():
        try:
            owner = int((workdir / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError):
            pid = int((workdir / "qemu.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(workdir).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        shutil.rmtree(workdir, ignore_errors=True)
    return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
