"""How many conntrack entries each conntrack zone holds, from one netlink dump.

The data plane gives each VNI its own zone; the metrics count a VNI's
tracked flows by dumping the table over ctnetlink and reading one attribute
(``CTA_ZONE``) of each entry. The dump is parsed here with ``struct``, not
pyroute2: a host holds hundreds of thousands of entries and only their zone
matters. Needs CAP_NET_ADMIN; reads the network namespace of the calling
thread. Imports nothing of butterfly but errors.
"""

import errno
import socket
import struct
from collections import Counter

from butterfly.errors import DataplaneError

__all__ = ["zone_entries"]

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_CTNETLINK = 1
_IPCTNL_MSG_CT_GET = 1
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_CTA_ZONE = 18
_NLA_TYPE_MASK = 0x3FFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_ATTR = struct.Struct("=HH")  # nlattr: length, type
_NFGENMSG = 4
_BUFFER = 1 << 20


def _request() -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)  # every family, version 0
    kind = (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_GET
    return _HEADER.pack(_HEADER.size + len(body), kind, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + body


def _zone(data: bytes, start: int, end: int) -> int:
    """The CTA_ZONE of the entry whose attributes span ``data[start:end]`` (0: none)."""
    while start + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < _ATTR.size:
            break
        if kind & _NLA_TYPE_MASK == _CTA_ZONE:
            (zone,) = struct.unpack_from("!H", data, start + _ATTR.size)
            return int(zone)
        start += (length + 3) & ~3
    return 0


def zone_entries() -> dict[int, int]:
    """Entries per zone (zone 0 holds what no zone was set for)."""
    counts: Counter[int] = Counter()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
            sock.send(_request())
            while True:
                data = sock.recv(_BUFFER)
                offset = 0
                while offset + _HEADER.size <= len(data):
                    length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
                    if kind == _NLMSG_DONE:
                        return dict(counts)
                    if kind == _NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                        if code == 0:
                            return dict(counts)
                        raise OSError(-code, errno.errorcode.get(-code, "netlink error"))
                    body = offset + _HEADER.size + _NFGENMSG
                    counts[_zone(data, body, offset + length)] += 1
                    offset += (length + 3) & ~3
    except OSError as error:
        raise DataplaneError(f"conntrack: cannot dump the table: {error}") from error
