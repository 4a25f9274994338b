"""Property-based tests: hostile frames against ONE running daemon.

For every frame (random bytes, damaged valid frames, valid envelopes full of
absurd values): the daemon answers with a well-formed reply that matches the
request (one answer per message, in order, ids echoed, the envelope error
codes of the specification), it stays alive and answers app_status, and the
state (every nic, SG and peer) is unchanged unless some request succeeded.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from api_helpers import Sg, dump, nic, ok, request, rule
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from butterfly.api.client import Client
from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Error, Messages
from butterfly.errors import ClientError
from butterfly_lab.daemon import DaemonProcess

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Target:
    """The one daemon of this module, its client and the last known state."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.client = Client(endpoint=daemon.endpoint, timeout_ms=20_000)
        self.state = ""
        self.frames = 0

    def refresh(self) -> None:
        self.state = dump(self.client)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    daemon = DaemonProcess(str(tmp_path_factory.mktemp("fuzzd")), log_level="warning")
    daemon.start()
    target = Target(daemon)
    try:
        client = target.client
        ok(client, nic_add=nic("vnic-1", ips=("10.0.0.1",), sgs=("sg-1",)))
        ok(client, nic_add=nic("vnic-2", mac="52:54:00:00:00:02", type=MessageV0.Nic.TAP))
        ok(
            client,
            sg_add=Sg(
                id="sg-1",
                member=["10.0.0.1", "2001:db8::1"],
                rule=[rule(protocol=6, ports=(22, 22), cidr=("10.0.0.0", 8)), rule(sg="sg-2")],
            ),
        )
        target.refresh()
        yield target
        print(f"\nfuzz: {target.frames} frames answered")
    finally:
        target.client.close()
        code = daemon.stop() if daemon.alive() else daemon.returncode
        log = daemon.log()
        daemon.close()
        shutil.rmtree(daemon.directory, ignore_errors=True)
        assert code == 0, log


# what a reply must look like


def _expected_envelope(frame: bytes) -> tuple[str, Messages | None]:
    """How the (keyless) daemon must answer ``frame``: 'parse', 'rejected' or 'messages'.

    As the deployed daemon: without a key it answers the messages if there
    are any, and rejects the rest (nothing, or only encrypted content).
    """
    parsed = Messages()
    try:
        parsed.ParseFromString(frame)
    except Exception:  # any parse failure is a PARSE_ERROR
        return "parse", None
    if not parsed.IsInitialized():  # so is a missing required field, as in C++
        return "parse", None
    if not parsed.messages:
        return "rejected", parsed
    return "messages", parsed


def _asks_to_quit(parsed: Messages | None) -> bool:
    if parsed is None:
        return False
    return any(
        m.HasField("message_0")
        and m.message_0.HasField("request")
        and m.message_0.request.HasField("app_quit")
        for m in parsed.messages
    )


def _check(target: Target, frame: bytes, *, generated: bool = True) -> None:
    """Send one frame and check everything the module docstring promises."""
    kind, parsed = _expected_envelope(frame)
    if generated:
        assume(not _asks_to_quit(parsed))
    else:
        assert not _asks_to_quit(parsed)
    assert target.daemon.alive(), f"the daemon died earlier:\n{target.daemon.log()[-5000:]}"
    target.frames += 1
    reply = Messages()
    try:
        reply.ParseFromString(target.client.send_frame(frame))
    except ClientError:
        assert target.daemon.alive(), f"the daemon died:\n{target.daemon.log()[-5000:]}"
        raise
    succeeded = False
    if kind == "parse":
        assert [m.error.code for m in reply.messages] == [Error.PARSE_ERROR], reply
    elif kind == "rejected":
        assert [m.error.code for m in reply.messages] == [Error.REJECTED], reply
        assert not reply.HasField("encrypted"), reply
    else:
        assert parsed is not None
        assert len(reply.messages) == len(parsed.messages)
        for sent, answer in zip(parsed.messages, reply.messages, strict=True):
            assert answer.revision >= REVISION
            if not sent.HasField("message_0"):
                assert answer.error.code == Error.VERSION_NOT_MANAGED
                assert not answer.HasField("message_0")
                continue
            assert answer.HasField("message_0") and not answer.HasField("error")
            got = answer.message_0
            assert got.HasField("message_id") == sent.message_0.HasField("message_id")
            assert got.message_id == sent.message_0.message_id
            status = got.response.status
            if status.status:
                succeeded = True
            else:
                assert status.error.description
    assert target.daemon.alive(), target.daemon.log()[-5000:]
    assert ok(target.client, app_status=True).app_status.request_counter > 0
    if succeeded:
        target.refresh()
    else:
        assert dump(target.client) == target.state


# 1. random bytes


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(target: Target, data: bytes) -> None:
    _check(target, data)


# 2. valid frames, damaged


def _valid_frames() -> list[bytes]:
    requests = [
        request(nic_add=nic("fz", ips=("10.1.0.1", "2001:db8::5"), sgs=("sg-1",))),
        request(nic_update=MessageV0.NicUpdateReq(id="vnic-1", ip=["10.0.0.1"])),
        request(nic_details=""),
        request(nic_del="fz"),
        request(
            sg_add=Sg(
                id="sg-1",
                member=["10.0.0.1", "2001:db8::1"],
                rule=[rule(protocol=6, ports=(22, 22), cidr=("10.0.0.0", 8)), rule(sg="sg-2")],
            )
        ),
        request(
            sg_rule_add=MessageV0.SgRuleAddReq(
                sg_id="sg-1", rule=rule(protocol=17, ports=(53, 53), cidr=("2001:db8::", 32))
            )
        ),
        request(sg_member_add=MessageV0.SgMemberAddReq(sg_id="sg-1", member="10.0.0.1")),
        request(sg_details=""),
        request(app_status=True),
        request(vni_peer_add=MessageV0.VniPeerReq(vni=42, peer="192.0.2.1")),
    ]
    frames = []
    for index, one in enumerate(requests):
        envelope = Messages()
        message = envelope.messages.add(revision=REVISION)
        message.message_0.request.CopyFrom(one)
        message.message_0.message_id = f"id-{index}"
        frames.append(envelope.SerializeToString())
    frames.append(b"".join(frames))  # several messages in one frame
    return frames


VALID_FRAMES = _valid_frames()


@st.composite
def damaged_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "duplicate"]))
        at = draw(st.integers(0, max(0, len(frame) - 1)))
        if how == "truncate":
            del frame[at:]
        elif how == "flip" and frame:
            frame[at] ^= draw(st.integers(1, 255))
        elif how == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif how == "delete":
            del frame[at : at + draw(st.integers(1, 8))]
        else:
            frame[at:at] = frame[at : at + draw(st.integers(1, 32))]
    return bytes(frame)


@FUZZ
@given(frame=damaged_frames())
def test_damaged_valid_frames(target: Target, frame: bytes) -> None:
    _check(target, frame)


# 3. valid envelopes, absurd values


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _with_enum(message: Any, field_number: int, value: int) -> Any:
    """``message`` with an enum field set to any number, known or not (as raw bytes)."""
    raw = message.SerializePartialToString() + _varint(field_number << 3) + _varint(value)
    out = type(message)()
    out.ParseFromString(raw)
    return out


HUGE = 100_000
texts = st.one_of(
    st.sampled_from(["", "vnic-1", "sg-1", "sg-2", "10.0.0.1", "2001:db8::1", "none", "debug"]),
    st.text(max_size=40),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["x", "é", "\0", "/", ":"]), st.integers(1, HUGE)
    ),
)
ips = st.one_of(st.ip_addresses().map(str), texts)
uint32 = st.one_of(st.integers(0, 70_000), st.integers(0, (1 << 32) - 1))
int32 = st.one_of(st.integers(-3, 300), st.integers(-(1 << 31), (1 << 31) - 1))
enum_values = st.one_of(st.integers(0, 3), st.integers(0, (1 << 31) - 1), st.just(100))


@st.composite
def absurd_rules(draw: st.DrawFn) -> MessageV0.Rule:
    out = MessageV0.Rule(protocol=draw(int32))
    if draw(st.booleans()):
        out.port_start = draw(uint32)
    if draw(st.booleans()):
        out.port_end = draw(uint32)
    if draw(st.booleans()):
        out.cidr.address = draw(ips)
        out.cidr.mask_size = draw(uint32)
    if draw(st.booleans()):
        out.security_group = draw(texts)
    return _with_enum(out, 1, draw(enum_values))


@st.composite
def absurd_nics(draw: st.DrawFn) -> MessageV0.Nic:
    out = MessageV0.Nic(
        id=draw(texts),
        mac=draw(st.one_of(st.just("52:54:00:00:00:09"), texts)),
        vni=draw(uint32),
        ip=draw(st.lists(ips, max_size=5)),
        security_group=draw(st.lists(texts, max_size=3)),
    )
    for name in ("ip_anti_spoof", "bypass_filtering", "packet_trace"):
        if draw(st.booleans()):
            setattr(out, name, draw(st.booleans()))
    for name in ("path", "packet_trace_path", "sniff_target_nic_id", "btype", "dip", "dmac"):
        if draw(st.integers(0, 3)) == 0:
            setattr(out, name, draw(texts))
    for name in ("max_connections", "max_new_connections"):
        if draw(st.integers(0, 3)) == 0:
            setattr(out, name, draw(uint32))
    if draw(st.booleans()):
        out = _with_enum(out, 9, draw(enum_values))
    return out


@st.composite
def absurd_requests(draw: st.DrawFn) -> MessageV0.Request:
    kind = draw(
        st.sampled_from(
            [
                f.name
                for f in MessageV0.Request.DESCRIPTOR.oneofs_by_name["request"].fields
                if f.name != "app_quit"
            ]
        )
    )
    value: Any
    if kind in ("nic_add",):
        value = draw(absurd_nics())
    elif kind == "nic_update":
        value = MessageV0.NicUpdateReq(
            id=draw(texts),
            ip=draw(st.lists(ips, max_size=4)),
            security_group=draw(st.lists(texts, max_size=3)),
        )
        if draw(st.booleans()):
            value.ip_anti_spoof = draw(st.booleans())
        if draw(st.booleans()):
            value.packet_trace_path = draw(texts)
        if draw(st.booleans()):
            value.max_connections = draw(uint32)
    elif kind == "sg_add":
        value = MessageV0.Sg(id=draw(texts), member=draw(st.lists(ips, max_size=4)))
        for one in draw(st.lists(absurd_rules(), max_size=3)):
            value.rule.add().CopyFrom(one)
    elif kind in ("sg_rule_add", "sg_rule_del"):
        cls = MessageV0.SgRuleAddReq if kind == "sg_rule_add" else MessageV0.SgRuleDelReq
        value = cls(sg_id=draw(texts))
        value.rule.CopyFrom(draw(absurd_rules()))
    elif kind in ("sg_member_add", "sg_member_del"):
        cls = MessageV0.SgMemberAddReq if kind == "sg_member_add" else MessageV0.SgMemberDelReq
        value = cls(sg_id=draw(texts), member=draw(ips))
    elif kind == "nic_import":
        value = MessageV0.NicImportReq(id=draw(texts), data=draw(st.binary(max_size=300)))
    elif kind in ("vni_peer_add", "vni_peer_del"):
        value = MessageV0.VniPeerReq(vni=draw(uint32), peer=draw(ips))
    elif kind == "app_config":
        value = MessageV0.AppConfigReq()
        if draw(st.booleans()):
            value.log_level = draw(
                st.sampled_from(["none", "error", "warning", "info", "debug", "loud", ""])
            )
    elif kind in ("nic_list", "sg_list", "app_status", "vni_peer_list"):
        value = draw(st.booleans())
    else:
        value = draw(texts)
    request = MessageV0.Request(**{kind: value})
    # The fields outside the oneof: our flags, with any request.
    for flag in ("with_additions", "app_status_drift", "app_status_reconcile", "app_status_graph"):
        if draw(st.booleans()):
            setattr(request, flag, draw(st.booleans()))
    return request


@st.composite
def absurd_envelopes(draw: st.DrawFn) -> bytes:
    envelope = Messages()
    for one in draw(st.lists(absurd_requests(), min_size=0, max_size=12)):
        message = envelope.messages.add(revision=draw(uint32))
        message.message_0.request.CopyFrom(one)
        if draw(st.booleans()):
            message.message_0.message_id = draw(texts)
    if draw(st.integers(0, 9)) == 0:
        envelope.messages.add(revision=draw(uint32))  # no message_0
    return envelope.SerializePartialToString()  # a rule's direction may be unknown: unset


@FUZZ
@given(frame=absurd_envelopes())
def test_absurd_values_in_valid_envelopes(target: Target, frame: bytes) -> None:
    _check(target, frame)


# huge frames, one each (not worth shrinking)


def _deep_groups(depth: int) -> bytes:
    start, end = _varint((99 << 3) | 3), _varint((99 << 3) | 4)
    return start * depth + end * depth


def _many_messages(count: int) -> bytes:
    envelope = Messages()
    for index in range(count):
        message = envelope.messages.add(revision=REVISION)
        message.message_0.request.nic_details = f"ghost-{index}"
        message.message_0.message_id = str(index)
    return envelope.SerializeToString()


def _huge_id() -> bytes:
    envelope = Messages()
    envelope.messages.add(revision=REVISION).message_0.request.nic_add.CopyFrom(
        nic("x" * 4_000_000)
    )
    return envelope.SerializeToString()


def _many_bad_ips() -> bytes:
    envelope = Messages()
    envelope.messages.add(revision=REVISION).message_0.request.nic_add.CopyFrom(
        nic("many", ips=(*(f"10.0.{i // 256}.{i % 256}" for i in range(50_000)), "x"))
    )
    return envelope.SerializeToString()


HUGE_FRAMES = {
    "random-8MB": lambda: random.Random(1).randbytes(8 << 20),
    "zeros-8MB": lambda: bytes(8 << 20),
    "deep-groups": lambda: _deep_groups(200_000),
    "5000-messages": lambda: _many_messages(5000),
    "4MB-nic-id": _huge_id,
    "50000-ips-one-bad": _many_bad_ips,
    "one-message-4MB-unknown-field": lambda: (
        _many_messages(1) + _varint((77 << 3) | 2) + _varint(4 << 20) + os.urandom(4 << 20)
    ),
}


@pytest.mark.parametrize("name", list(HUGE_FRAMES))
def test_huge_frames(target: Target, name: str) -> None:
    _check(target, HUGE_FRAMES[name](), generated=False)
