"""The session export blob (butterfly.model.sessions): round trip and every refusal."""

import hashlib
import json

import pytest

from butterfly.errors import BadSessions
from butterfly.model.sessions import (
    MAGIC,
    FlowTuple,
    Session,
    SessionExport,
    TcpInfo,
    decode_sessions,
    encode_sessions,
)

TCP = Session(
    6,
    FlowTuple("10.0.0.1", "10.0.0.2", sport=40000, dport=80),
    FlowTuple("10.0.0.2", "10.0.0.1", sport=80, dport=40000),
    status=14,
    timeout=431999,
    tcp=TcpInfo(state=3, wscale_original=7, wscale_reply=9, flags_original=35, flags_reply=35),
)
PING6 = Session(
    58,
    FlowTuple("2001:db8::1", "2001:db8::2", icmp_id=5, icmp_type=128, icmp_code=0),
    FlowTuple("2001:db8::2", "2001:db8::1", icmp_id=5, icmp_type=129, icmp_code=0),
    status=10,
    timeout=29,
)
EXPORT = SessionExport(vni=42, nic_id="vnic_1", sessions=(TCP, PING6))


def _with_payload(document: object) -> bytes:
    payload = json.dumps(document).encode()
    return MAGIC + b"\x01" + hashlib.sha256(payload).digest() + payload


def test_round_trip() -> None:
    blob = encode_sessions(EXPORT)
    assert blob.startswith(b"BFLYSESS\x01")
    assert decode_sessions(blob) == EXPORT


def test_involves_and_version() -> None:
    assert TCP.involves(["10.0.0.2"]) and not TCP.involves(["10.0.0.3"])
    assert (TCP.version, PING6.version) == (4, 6)


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (b"", "truncated"),
        (encode_sessions(EXPORT)[:30], "truncated"),
        (encode_sessions(EXPORT)[:-1], "corrupted or truncated"),
        (encode_sessions(EXPORT) + b" ", "corrupted"),
        (b"XXXXXXXX" + encode_sessions(EXPORT)[8:], "magic"),
        (MAGIC + b"\x02" + encode_sessions(EXPORT)[9:], "format version 2"),
        (_with_payload([1, 2]), "vni is missing"),
        (_with_payload({"vni": 1 << 24, "nic": "a", "sessions": []}), "out of range"),
        (_with_payload({"vni": True, "nic": "a", "sessions": []}), "vni is not int"),
        (_with_payload({"vni": 1, "nic": "a", "sessions": [{"protocol": 6}]}), "original"),
    ],
    ids=["empty", "header", "cut", "extra", "magic", "version", "list", "vni", "bool", "tuple"],
)
def test_refusals_say_what_is_wrong(blob: bytes, words: str) -> None:
    with pytest.raises(BadSessions, match=words) as raised:
        decode_sessions(blob)
    assert str(raised.value).startswith("Bad session data: ")


def test_bad_values_inside_a_session_are_named() -> None:
    def session(**changes: object) -> dict[str, object]:
        base: dict[str, object] = {
            "protocol": 6,
            "original": {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1, "dport": 2},
            "reply": {"src": "10.0.0.2", "dst": "10.0.0.1", "sport": 2, "dport": 1},
            "status": 14,
            "timeout": 10,
        }
        base.update(changes)
        return {"vni": 1, "nic": "a", "sessions": [base]}

    cases = {
        "is not an IP address": session(original={"src": "bogus", "dst": "10.0.0.2"}),
        "mix IPv4 and IPv6": session(reply={"src": "2001:db8::1", "dst": "10.0.0.1"}),
        "sport 70000 is out of range": session(original={"src": "10.0.0.1", "dst": "10.0.0.2",
                                                         "sport": 70000}),
        "protocol 256": session(protocol=256),
        "tcp: state is missing": session(tcp={}),
        "timeout -1": session(timeout=-1),
    }  # fmt: skip
    for words, document in cases.items():
        with pytest.raises(BadSessions, match=words):
            decode_sessions(_with_payload(document))
