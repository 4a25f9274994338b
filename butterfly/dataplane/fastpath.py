"""The eBPF fast path: established flows of filtered vnics, past the bridge.

Owns the choice of the path (``--fast-path auto|ebpf|off``), the loading of
the compiled program (``bpf/fastpath.bpf.c``; tools/setup builds it into
:data:`OBJECT`) through libbpf, and the contents of its maps. The kernel
data plane attaches the program on the tc ingress of every vnic's port
(:mod:`.links`) and tells this module which vnics it may serve (:func:`fast_port`);
everything else about a frame is decided in the kernel:

- the program forwards a frame (bpf_redirect to the receiver's port) only
  when the bridge + nftables path would accept it at its first rule: a
  unicast UDP frame (or TCP segment without SYN, FIN or RST, when conntrack
  does not check TCP windows in this namespace: ``nf_conntrack_tcp_be_liberal``,
  read at start-up, as conntrack misses the segments forwarded) from the
  port's own MAC (and, with IP anti-spoofing, an address of the vnic), to a
  vnic of the same VNI on this host that the fast path serves, of a flow
  conntrack holds as established in the VNI's zone; it refreshes the entry
  and sets the mark bits the port guard (:mod:`.guard`) wants, as the
  tables would;
- the original direction of a UDP flow conntrack holds unreplied too, but
  only between the pair of ports the tables last delivered one of its
  frames for (a second program, on every port's egress ahead of the guard,
  records them) and only until the daemon calls :meth:`FastPath.narrowed`
  (after any change that may narrow what a vnic accepts): the tables judge
  each frame of such a flow by its own sender and receiver;
- across hosts, the same on both ends, each host by its own conntrack, in
  the VNIs whose every vnic here the fast path serves (a :class:`Tunnel` on
  the VNI's VXLAN device): the program also runs on the ingress of the VXLAN
  devices, forwarding what other hosts send to a served vnic as it forwards
  a local vnic's frames (established, or one-way UDP admitted for the
  pair); and a vnic's established flow to a MAC of no local vnic goes to the
  VXLAN device (a MAC in none of the maps is then another host's, where the
  bridge would send it too);
- every other frame (new flows, other TCP, ICMP, ARP, ND, broadcast, one-way
  UDP to other hosts, fragments, VLAN tags, sniffed VNIs, bypassing vnics)
  returns to the bridge + nftables path unchanged, which also creates and
  advances the conntrack entries.

So the security groups, connection caps and anti-spoofing keep one
implementation, and a map that lags behind only sends frames the slow way.
The maps live as long as the program: a daemon killed leaves the ports
forwarding as they were; the next one loads a new program and replaces it
on every port at reconcile (or removes it, with ``off``). The daemon checks
what the program needs before it serves (:func:`prepare`: milliseconds) and
loads it after (:meth:`PendingFastPath.load`: the kernel's verifier takes
0.1-0.35 s), as the start-up reconcile's first step.
"""

import ctypes
import ctypes.util
import ipaddress
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from butterfly.errors import ConfigError, DataplaneError
from butterfly.model import StateView, Vnic
from butterfly.model.firewall import link_local

__all__ = [
    "ADMISSION_FILTER",
    "FILTER_NAME",
    "OBJECT",
    "FastPath",
    "FastPathMode",
    "FastPort",
    "PendingFastPath",
    "Tunnel",
    "choose",
    "fast_port",
    "prepare",
    "sniffed",
]

log = logging.getLogger(__name__)

OBJECT = Path(__file__).parent / "bpf" / "build" / "fastpath.bpf.o"
"""Where tools/setup (tools/build-bpf) puts the compiled program (ignored by git)."""
FILTER_NAME = "bf-fastpath"
"""The tc filter's name on a port's ingress."""
ADMISSION_FILTER = "bf-admitted"
"""The tc filter's name on a port's egress, ahead of the port guard: it records
which pair of ports the tables admitted an unreplied UDP flow for."""
_PROGRAM = b"fastpath"
_ADMISSION = b"admitted"
_NETFILTER = "/proc/sys/net/netfilter/"
_BPF_ANY = 0
_BTF_KIND_STRUCT = 4
_CT_OPTS_WITH_ZONE = 16
_ENOENT = 2
_SYS_MEMBARRIER = 324
"""x86-64's membarrier(2)."""
_MEMBARRIER_CMD_GLOBAL = 1
_GRACE_FALLBACK = 0.1
"""Seconds to wait when membarrier cannot (a nohz_full kernel): far more than
a frame spends between the tables and its port."""


class FastPathMode(Enum):
    """--fast-path: ``auto`` uses eBPF when the program is built and the kernel loads it."""

    AUTO = "auto"
    EBPF = "ebpf"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class FastPort:
    """What the program knows of one vnic it serves."""

    ifindex: int
    vni: int
    zone: int
    mac: str
    check_ip: bool
    addresses: tuple[str, ...]
    """The sources it may send from (with ``check_ip``): IPv4, IPv6, link-local."""


@dataclass(frozen=True, slots=True)
class Tunnel:
    """What the program knows of a VNI's VXLAN device: it has one only while it
    serves every vnic of the VNI on this host (see :meth:`FastPath.plan_tunnels`)."""

    ifindex: int
    vni: int
    zone: int


def fast_port(vnic: Vnic, *, ifindex: int, zone: int | None, sniffed: bool) -> FastPort | None:
    """The fast path's entry for ``vnic``, or None when its frames all take the
    slow path: bypassing vnics (no conntrack entries to rely on), VNIs without
    a zone, and ``sniffed`` VNIs (:func:`sniffed`)."""
    if vnic.bypass_filtering or zone is None or sniffed:
        return None
    addresses: tuple[str, ...] = ()
    if vnic.ip_anti_spoof:
        addresses = tuple(dict.fromkeys((*vnic.ips, link_local(vnic.mac))))
    return FastPort(
        ifindex=ifindex,
        vni=vnic.vni,
        zone=zone,
        mac=vnic.mac.lower(),
        check_ip=vnic.ip_anti_spoof,
        addresses=addresses,
    )


def sniffed(vnics: Iterable[Vnic]) -> bool:
    """Whether one of a VNI's ``vnics`` is sniffed: the copies of its frames are
    made on the ingress of every port of the VNI, after tc, which the fast
    path would skip."""
    return any(vnic.sniff_target_nic_id for vnic in vnics)


class _Libbpf:
    """The few libbpf 1.x calls the fast path needs (Debian's libbpf1)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise DataplaneError(f"fast path: libbpf is missing ({exc}); install libbpf1") from exc
        lib.bpf_object__open.restype = ctypes.c_void_p
        lib.bpf_object__open.argtypes = [ctypes.c_char_p]
        lib.bpf_object__load.argtypes = [ctypes.c_void_p]
        lib.bpf_object__close.argtypes = [ctypes.c_void_p]
        lib.bpf_object__find_program_by_name.restype = ctypes.c_void_p
        lib.bpf_object__find_program_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.bpf_program__fd.argtypes = [ctypes.c_void_p]
        lib.bpf_object__find_map_fd_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
        lib.bpf_map_update_elem.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_uint64,
        ]
        lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_char_p]
        lib.libbpf_num_possible_cpus.argtypes = []
        lib.btf__load_vmlinux_btf.restype = ctypes.c_void_p
        lib.btf__find_by_name_kind.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]
        lib.btf__type_by_id.restype = ctypes.POINTER(ctypes.c_uint32)
        lib.btf__type_by_id.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.btf__free.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def check_kernel(self) -> None:
        """DataplaneError unless the running kernel's conntrack kfuncs take a
        zone: their options struct has 16 bytes then (a kernel with the 12-byte
        one would load the program and fail every lookup)."""
        btf = self.lib.btf__load_vmlinux_btf()
        if not btf:
            raise DataplaneError("fast path: the kernel has no BTF (/sys/kernel/btf/vmlinux)")
        try:
            type_id = self.lib.btf__find_by_name_kind(btf, b"bpf_ct_opts", _BTF_KIND_STRUCT)
            if type_id < 0:
                raise DataplaneError("fast path: the kernel has no conntrack kfuncs")
            size = self.lib.btf__type_by_id(btf, type_id)[2]
            if size != _CT_OPTS_WITH_ZONE:
                raise DataplaneError(
                    f"fast path: the kernel's conntrack kfuncs take no zone "
                    f"(bpf_ct_opts has {size} bytes, not {_CT_OPTS_WITH_ZONE})"
                )
        finally:
            self.lib.btf__free(btf)


def _checked(path: Path) -> _Libbpf:
    """libbpf, once the program is built and the kernel has what it needs."""
    if not path.exists():
        raise DataplaneError(f"fast path: {path} is not built (tools/setup builds it)")
    libbpf = _Libbpf()
    libbpf.check_kernel()
    return libbpf


def _error(what: str, code: int) -> DataplaneError:
    return DataplaneError(f"fast path: {what}: {os.strerror(abs(code))}")


class FastPath:
    """The loaded program and its maps (one per daemon)."""

    def __init__(self, path: Path = OBJECT, libbpf: _Libbpf | None = None) -> None:
        """``libbpf``: :func:`_checked`'s, when the checks were made already."""
        self._bpf = (libbpf or _checked(path)).lib
        self._obj = self._bpf.bpf_object__open(str(path).encode())
        if not self._obj:
            raise _error(f"opening {path}", ctypes.get_errno())
        try:
            code = self._bpf.bpf_object__load(self._obj)
            if code < 0:
                raise _error("the kernel refused the program (details on stderr)", code)
            program = self._bpf.bpf_object__find_program_by_name(self._obj, _PROGRAM)
            self.fd = int(self._bpf.bpf_program__fd(program))
            admission = self._bpf.bpf_object__find_program_by_name(self._obj, _ADMISSION)
            self.admission_fd = int(self._bpf.bpf_program__fd(admission))
            self._maps = {
                name: int(self._bpf.bpf_object__find_map_fd_by_name(self._obj, name.encode()))
                for name in (
                    "ports",
                    "dests",
                    "addrs",
                    "forwarded",
                    "settings",
                    "tunnels",
                    "remotes",
                )
            }
            self._cpus = int(self._bpf.libbpf_num_possible_cpus())
            self._timeouts, self.tcp = _settings()
            self._generation = 0
            self._update("settings", struct.pack("<I", 0), self._config())
        except BaseException:
            self.close()
            raise
        self._lock = threading.Lock()
        self._late = threading.Event()
        self._closing = False
        self._revoker = threading.Thread(
            target=self._revoke_late, name="fast-path-revoker", daemon=True
        )
        self._revoker.start()
        self._ports: dict[str, FastPort] = {}
        self._by_vni: dict[int, set[str]] = {}
        """The vnics of :attr:`_ports` by VNI: a request looks at its VNIs only."""
        self._tunnels: dict[int, Tunnel] = {}
        """By VNI."""

    def close(self) -> None:
        """The program stays on the ports it is attached to, with its maps."""
        if hasattr(self, "_revoker"):
            self._closing = True
            self._late.set()
            self._revoker.join()
        if self._obj:
            self._bpf.bpf_object__close(self._obj)
            self._obj = None

    def narrowed(self) -> None:
        """Void every admission of an unreplied flow: called after each change
        of the tables (groups, their rules and members, a vnic's settings, a
        vnic gone), so the next frame of each such flow meets them again, as
        it did before the fast path took them. One map update, whatever the
        number of flows; and once more from a thread after an RCU grace
        period: a frame the previous tables admitted may still be on its way
        to its port's egress (and record its pair with the new generation)
        until every CPU has left the section it was in."""
        self._bump()
        self._late.set()

    def _bump(self) -> None:
        with self._lock:
            if self._obj:
                self._generation = (self._generation + 1) & 0xFFFFFFFF
                self._update("settings", struct.pack("<I", 0), self._config())

    def _revoke_late(self) -> None:
        while True:
            self._late.wait()
            if self._closing:
                return
            self._late.clear()
            _grace_period()
            try:
                self._bump()
            except DataplaneError as exc:
                log.warning("%s (the request's own revocation went through)", exc)

    def _config(self) -> bytes:
        return struct.pack("<IIII", *self._timeouts, self._generation)

    def served(self) -> dict[str, FastPort]:
        return dict(self._ports)

    def port(self, vnic_id: str) -> FastPort | None:
        """What it knows of one vnic (:meth:`served` copies them all)."""
        return self._ports.get(vnic_id)

    def plan(
        self,
        state: StateView,
        vnis: Iterable[int],
        *,
        ported: Callable[[Vnic], bool],
        zones: Mapping[int, int],
        port_index: Callable[[str], int | None],
        remade: Collection[str] | None,
        changed: Collection[str] = (),
        named: Collection[str] | None = None,
    ) -> dict[str, FastPort | None]:
        """What :meth:`set` should say of the vnics of ``vnis`` (those that left
        them included): ``ported`` tells the vnics with a port, ``port_index``
        its ifindex by vnic id, asked only for vnics not served yet and those
        whose port may have been made again: ``remade`` (None: all). A served
        vnic neither remade nor ``changed`` keeps its entry while its VNI's
        zone and sniffing stay (making one costs ~8 us: a VNI has up to 10,000).

        ``named``: the only vnics a request changed (those it removed
        included; None: any). Of a VNI whose entries were made with its
        present zone and that no vnic sniffs, only those are looked at: the
        others' entries stand. Any other VNI is looked at whole.
        """
        vnis = set(vnis)
        terms = {vni: (zones.get(vni), self._sniffed(state, vni, ported)) for vni in vnis}

        def entry(vnic: Vnic) -> FastPort | None:
            zone, copied = terms[vnic.vni]
            known = self._ports.get(vnic.id)
            again = remade is None or vnic.id in remade
            kept = known is not None and known.zone == zone
            if kept and not (again or copied or vnic.id in changed):
                return known
            index = known.ifindex if known is not None and not again else port_index(vnic.id)
            if index is None:
                return None
            return fast_port(vnic, ifindex=index, zone=zone, sniffed=copied)

        whole = vnis
        if named is not None and remade is not None:
            whole = {vni for vni, terms_of in terms.items() if not self._settled(vni, *terms_of)}
        wanted: dict[str, FastPort | None] = {}
        for vnic_id in named or ():
            known = self._ports.get(vnic_id)
            if known is not None and known.vni in vnis:
                wanted[vnic_id] = None
        for vni in whole:
            wanted.update(dict.fromkeys(self._by_vni.get(vni, ())))
        for vni in whole:
            wanted.update((vnic.id, entry(vnic)) for vnic in state.vnics_in(vni) if ported(vnic))
        for vnic_id in named or ():
            vnic = state.vnic(vnic_id)
            if vnic is not None and vnic.vni in vnis - whole and ported(vnic):
                wanted[vnic_id] = entry(vnic)
        return wanted

    def _settled(self, vni: int, zone: int | None, copied: bool) -> bool:
        """Whether the VNI's entries stand: made with its present ``zone``
        (a request changing it has them all made again) and not ``copied``
        (no entry is kept while the VNI is sniffed, so they are all made
        again when its sniffing stops)."""
        served = self._by_vni.get(vni)
        if copied or not served:
            return False
        return self._ports[next(iter(served))].zone == zone

    @staticmethod
    def _sniffed(state: StateView, vni: int, ported: Callable[[Vnic], bool]) -> bool:
        return sniffed(vnic for vnic in state.sniffers_in(vni) if ported(vnic))

    def tunnel(self, vni: int) -> Tunnel | None:
        return self._tunnels.get(vni)

    def tunnels(self) -> dict[int, Tunnel]:
        return dict(self._tunnels)

    def plan_tunnels(
        self,
        state: StateView,
        vnis: Iterable[int],
        ports: Mapping[str, FastPort | None],
        *,
        zones: Mapping[int, int],
        tunnel_index: Callable[[int], int | None],
        remade: bool,
    ) -> dict[int, Tunnel | None]:
        """What :meth:`set` should say of the VXLAN devices of ``vnis`` along with
        ``ports`` (:meth:`plan`'s): a tunnel for each VNI every vnic of which
        will be served, on its VXLAN device (``tunnel_index``, asked only of VNIs
        without a tunnel, or of all when devices may have been ``remade``).

        Only then: a bypassing or sniffed vnic's port learns MACs or copies
        frames, so a MAC found in no map may be behind it, and the bridge must
        still learn where other hosts' MACs are (from their frames), or it
        would flood what it sends them to such ports."""
        served = {vni: len(self._by_vni.get(vni, ())) for vni in vnis}
        for vnic_id, port in ports.items():
            old = self._ports.get(vnic_id)
            if old is not None and old.vni in served:
                served[old.vni] -= 1
            if port is not None and port.vni in served:
                served[port.vni] += 1
        wanted: dict[int, Tunnel | None] = dict.fromkeys(served)
        for vni, count in served.items():
            zone, known = zones.get(vni), self._tunnels.get(vni)
            if not count or zone is None or count != state.count_in(vni):
                continue
            index = known.ifindex if known is not None and not remade else tunnel_index(vni)
            if index is not None:
                wanted[vni] = Tunnel(index, vni, zone)
        return wanted

    def set(
        self,
        ports: Mapping[str, FastPort | None],
        tunnels: Mapping[int, Tunnel | None] | None = None,
    ) -> None:
        """Serve the vnics mapped to a port and the VXLAN devices of the VNIs
        mapped to a tunnel, stop serving those mapped to None. The tunnels that
        end go first and the others last: a vnic no longer served but still on
        the bridge would have its frames taken for another host's."""
        tunnels = tunnels or {}
        self._set_tunnels({vni: None for vni, tunnel in tunnels.items() if tunnel is None})
        for vnic_id, port in ports.items():
            old = self._ports.pop(vnic_id, None)
            if old == port:
                if port is not None:
                    self._ports[vnic_id] = port
                continue
            # A port that stays keeps counting (a vnic's update); a new one starts at 0.
            same = old is not None and port is not None and old.ifindex == port.ifindex
            if old is not None:
                self._remove(old, forget=not same)
                self._by_vni[old.vni].discard(vnic_id)
            if port is not None:
                self._add(port, count=not same)
                self._ports[vnic_id] = port
                self._by_vni.setdefault(port.vni, set()).add(vnic_id)
        self._set_tunnels(tunnels)

    def _set_tunnels(self, tunnels: Mapping[int, Tunnel | None]) -> None:
        for vni, tunnel in tunnels.items():
            old = self._tunnels.pop(vni, None)
            if old == tunnel:
                if tunnel is not None:
                    self._tunnels[vni] = tunnel
                continue
            same = old is not None and tunnel is not None and old.ifindex == tunnel.ifindex
            if old is not None:
                self._remove_tunnel(old, forget=not same)
            if tunnel is not None:
                self._add_tunnel(tunnel, count=not same)
                self._tunnels[vni] = tunnel

    def forwarded(self, ifindex: int) -> tuple[int, int]:
        """(frames, bytes) the program forwarded from port (or VXLAN device)
        ``ifindex`` since it was loaded."""
        value = ctypes.create_string_buffer(16 * self._cpus)
        code = self._bpf.bpf_map_lookup_elem(
            self._maps["forwarded"], struct.pack("<I", ifindex), value
        )
        if code < 0:
            return 0, 0
        pairs = [struct.unpack_from("<QQ", value.raw, 16 * cpu) for cpu in range(self._cpus)]
        return sum(p for p, _ in pairs), sum(b for _, b in pairs)

    def _add_tunnel(self, tunnel: Tunnel, *, count: bool) -> None:
        index = struct.pack("<I", tunnel.ifindex)
        if count:
            self._update("forwarded", index, bytes(16 * self._cpus))
        self._update("tunnels", index, _tunnel_value(tunnel))
        self._update("remotes", struct.pack("<I", tunnel.vni), index)

    def _remove_tunnel(self, tunnel: Tunnel, *, forget: bool) -> None:
        index = struct.pack("<I", tunnel.ifindex)
        self._delete("remotes", struct.pack("<I", tunnel.vni))
        self._delete("tunnels", index)
        if forget:
            self._delete("forwarded", index)

    def _add(self, port: FastPort, *, count: bool) -> None:
        for key in _address_keys(port):
            self._update("addrs", key, b"\x01")
        index = struct.pack("<I", port.ifindex)
        if count:
            self._update("forwarded", index, bytes(16 * self._cpus))
        self._update("ports", index, _port_value(port))
        self._update("dests", _dest_key(port), index)

    def _remove(self, port: FastPort, *, forget: bool) -> None:
        index = struct.pack("<I", port.ifindex)
        self._delete("dests", _dest_key(port))
        self._delete("ports", index)
        for key in _address_keys(port):
            self._delete("addrs", key)
        if forget:
            self._delete("forwarded", index)

    def _update(self, name: str, key: bytes, value: bytes) -> None:
        code = self._bpf.bpf_map_update_elem(self._maps[name], key, value, _BPF_ANY)
        if code < 0:
            raise _error(f"updating map {name}", code)

    def _delete(self, name: str, key: bytes) -> None:
        code = self._bpf.bpf_map_delete_elem(self._maps[name], key)
        if code < 0 and -code != _ENOENT:
            raise _error(f"updating map {name}", code)


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _port_value(port: FastPort) -> bytes:
    return struct.pack("<IHBx6s2x", port.vni, port.zone, port.check_ip, _mac(port.mac))


def _tunnel_value(tunnel: Tunnel) -> bytes:
    return struct.pack("<IH2x", tunnel.vni, tunnel.zone)


def _dest_key(port: FastPort) -> bytes:
    return struct.pack("<I6s2x", port.vni, _mac(port.mac))


def _address_keys(port: FastPort) -> list[bytes]:
    keys = []
    for address in port.addresses:
        ip = ipaddress.ip_address(address)
        keys.append(struct.pack("<II16s", port.ifindex, ip.version, ip.packed))
    return keys


def _grace_period() -> None:
    """Wait until every CPU has left the RCU read-side sections it was in
    (membarrier's global command is synchronize_rcu): the bridge, the tables
    and a port's egress programs handle a frame within one such section."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_MEMBARRIER, _MEMBARRIER_CMD_GLOBAL, 0, 0) != 0:
        time.sleep(_GRACE_FALLBACK)


def _sysctl(name: str) -> int:
    try:
        with open(_NETFILTER + name) as file:
            return int(file.read())
    except (OSError, ValueError) as exc:
        raise DataplaneError(f"fast path: reading {_NETFILTER}{name}: {exc}") from exc


def _settings() -> tuple[tuple[int, int, int], bool]:
    """conntrack's timeouts of this namespace, in ms (the program refreshes an
    entry as conntrack would: the frames it forwards skip conntrack), and
    whether TCP may take the fast path: only when conntrack does not check
    TCP windows here (tcp_be_liberal), as it misses the segments forwarded."""
    udp = _sysctl("nf_conntrack_udp_timeout") * 1000
    stream = _sysctl("nf_conntrack_udp_timeout_stream") * 1000
    tcp = _sysctl("nf_conntrack_tcp_be_liberal") == 1
    established = _sysctl("nf_conntrack_tcp_timeout_established") * 1000 if tcp else 0
    return (udp, stream, min(established, 0xFFFFFFFF)), tcp


LOADING = (
    "ebpf, loading: the start-up reconcile loads it and attaches it to every port; "
    "until then the bridge + nftables path carries every frame (and the previous "
    "daemon's program established flows, on the ports it was left on)"
)
"""What status says of a fast path prepared and not yet loaded and attached."""


class PendingFastPath:
    """A fast path whose prerequisites are met (:func:`prepare`) and whose
    program is not loaded yet: the data plane loads it once the API serves."""

    def __init__(self, mode: FastPathMode, path: Path, libbpf: _Libbpf) -> None:
        self.mode = mode
        self._path = path
        self._libbpf = libbpf

    @property
    def required(self) -> bool:
        """Whether the operator asked for eBPF (``ebpf``): a failure is a problem
        to report, not the fallback ``auto`` chooses."""
        return self.mode is FastPathMode.EBPF

    def load(self, *, strict: bool = False) -> tuple[FastPath | None, str]:
        """The loaded program and its status; None and why, when the kernel
        refuses it (the bridge + nftables path carries everything then), or
        with ``strict`` ConfigError when ``ebpf`` was asked."""
        try:
            fast = FastPath(self._path, self._libbpf)
        except DataplaneError as exc:
            if strict and self.required:
                raise ConfigError(f"--fast-path ebpf: {exc}") from exc
            return None, f"off ({self.mode.value}: {exc})"
        return fast, _loaded(fast)


def prepare(
    mode: FastPathMode, path: Path = OBJECT, *, repaired: bool = True
) -> tuple[PendingFastPath | None, str]:
    """The fast path ``mode`` asks for, to load later, or None and why not, for status.

    ``ebpf`` fails (ConfigError) when the program is not built or the kernel
    lacks what it needs; ``auto`` falls back to the bridge + nftables path
    then, saying why. ``auto`` also stays off when drift is not ``repaired``
    (--report-drift-only): while butterfly's tables are gone, established
    flows would go on through the fast path, and an operator debugging the
    tables by hand should see only what they do.
    """
    if mode is FastPathMode.OFF:
        return None, "off (--fast-path off)"
    if mode is FastPathMode.AUTO and not repaired:
        return None, "off (auto, --report-drift-only: only the tables decide)"
    try:
        libbpf = _checked(path)
    except DataplaneError as exc:
        if mode is FastPathMode.EBPF:
            raise ConfigError(f"--fast-path ebpf: {exc}") from exc
        return None, f"off (auto: {exc})"
    return PendingFastPath(mode, path, libbpf), LOADING


def choose(
    mode: FastPathMode, path: Path = OBJECT, *, repaired: bool = True
) -> tuple[FastPath | None, str]:
    """:func:`prepare` and load at once (for data planes made before they
    serve); ``ebpf`` fails (ConfigError) when the kernel refuses the program."""
    pending, status = prepare(mode, path, repaired=repaired)
    if pending is None:
        return None, status
    return pending.load(strict=True)


def _loaded(fast: FastPath) -> str:
    tcp = "UDP and TCP (conntrack is liberal)" if fast.tcp else "UDP"
    return (
        f"ebpf: established {tcp} between vnics, on this host and across hosts, "
        "and admitted one-way UDP to local vnics"
    )
