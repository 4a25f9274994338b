"""The envelope over the wire: several messages per frame, message ids, envelope errors."""

import time

from api_helpers import dump, frame, nic, ok, request

from butterfly.api.client import Client
from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Error, Messages


def _raw(client: Client, envelope: Messages | bytes) -> Messages:
    data = envelope if isinstance(envelope, bytes) else envelope.SerializeToString()
    reply = Messages()
    reply.ParseFromString(client.send_frame(data))
    return reply


def test_several_messages_are_executed_and_answered_in_order(client: Client) -> None:
    requests = [
        request(nic_add=nic("b")),
        request(nic_list=True),
        request(nic_details="missing"),  # fails, the rest still runs
        request(nic_add=nic("a", mac="52:54:00:00:00:02")),
        request(nic_list=True),
        request(nic_del="b"),
        request(nic_list=True),
    ]
    ids: list[str | None] = ["m0", None, "m2", "m3", "", "m5", "m6"]
    reply = _raw(client, frame(*requests, message_ids=ids))
    assert len(reply.messages) == len(requests)
    answers = [message.message_0 for message in reply.messages]
    assert all(message.revision >= REVISION >= 6 for message in reply.messages)
    statuses = [answer.response.status.status for answer in answers]
    assert statuses == [True, True, False, True, True, True, True]
    assert list(answers[1].response.nic_list) == ["b"]
    assert answers[2].response.status.error.description == "NIC does not exist with id missing"
    assert list(answers[4].response.nic_list) == ["a", "b"]
    assert list(answers[6].response.nic_list) == ["a"]
    # message_id echoed whenever it is set (even empty), absent otherwise
    assert [a.message_id if a.HasField("message_id") else None for a in answers] == ids


def test_a_hundred_messages_in_one_frame(client: Client) -> None:
    requests = [request(nic_add=nic(f"n{i:03}", vni=i)) for i in range(100)]
    reply = _raw(client, frame(*requests, message_ids=[str(i) for i in range(100)]))
    assert [m.message_0.message_id for m in reply.messages] == [str(i) for i in range(100)]
    assert all(m.message_0.response.status.status for m in reply.messages)
    assert len(ok(client, nic_list=True).nic_list) == 100


def test_message_id_is_echoed_by_the_client_call(client: Client) -> None:
    answer = client.call(request(app_status=True), message_id="abc-123")
    assert answer.message_id == "abc-123"
    answer = client.call(request(nic_details="x"), message_id="failing")
    assert answer.message_id == "failing"
    assert not answer.response.status.status


def _envelope_error(reply: Messages) -> int:
    assert len(reply.messages) == 1, reply
    message = reply.messages[0]
    assert message.revision >= 6
    assert message.HasField("error") and not message.HasField("message_0"), reply
    return message.error.code


def test_unparsable_frame_gets_parse_error(client: Client) -> None:
    before = dump(client)
    assert _envelope_error(_raw(client, b"\xff\xff\xff\xff")) == Error.PARSE_ERROR
    assert _envelope_error(_raw(client, b"\x0a\x05abc")) == Error.PARSE_ERROR  # truncated
    assert dump(client) == before


def test_empty_frame_is_rejected(client: Client) -> None:
    """As the deployed daemon: an empty Messages (nothing encrypted) is REJECTED."""
    assert _envelope_error(_raw(client, b"")) == Error.REJECTED
    assert _envelope_error(_raw(client, Messages())) == Error.REJECTED


def test_message_without_message_0_gets_version_not_managed(client: Client) -> None:
    envelope = Messages()
    envelope.messages.add(revision=7)
    assert _envelope_error(_raw(client, envelope)) == Error.VERSION_NOT_MANAGED


def test_version_not_managed_is_answered_per_message(client: Client) -> None:
    envelope = frame(request(nic_add=nic("a")), request(nic_list=True))
    envelope.messages.insert(1, Messages().messages.add(revision=99))
    reply = _raw(client, envelope)
    assert len(reply.messages) == 3
    assert reply.messages[0].message_0.response.status.status
    assert reply.messages[1].HasField("error")
    assert reply.messages[1].error.code == Error.VERSION_NOT_MANAGED
    assert list(reply.messages[2].message_0.response.nic_list) == ["a"]


def test_message_0_without_request_fails_cleanly(client: Client) -> None:
    envelope = Messages()
    envelope.messages.add(revision=6).message_0.message_id = "no-request"
    reply = _raw(client, envelope)
    answer = reply.messages[0].message_0
    assert answer.message_id == "no-request"
    assert not answer.response.status.status
    assert answer.response.status.error.description


def test_the_daemon_serves_on_after_errors(client: Client) -> None:
    for data in (b"\x00", b"garbage" * 100, b"", MessageV0().SerializeToString()):
        _raw(client, data)
    ok(client, nic_add=nic("fine"))
    assert list(ok(client, nic_list=True).nic_list) == ["fine"]


def test_message_id_that_is_not_utf8_is_echoed_and_the_daemon_survives(client: Client) -> None:
    """proto2 strings are bytes on the wire: a C++ client may send any."""
    inner = MessageV0()
    inner.ParseFromString(
        MessageV0(request=request(nic_list=True)).SerializeToString() + b"\x1a\x02\xf7A"
    )
    envelope = Messages()
    envelope.messages.add(revision=REVISION).message_0.CopyFrom(inner)
    data = envelope.SerializeToString()
    reply = client.send_frame(data)
    assert b"\x1a\x02\xf7A" in reply
    parsed = Messages()
    parsed.ParseFromString(reply)
    assert parsed.messages[0].message_0.response.status.status
    ok(client, nic_list=True)


def test_request_strings_that_are_not_utf8_fail_cleanly(client: Client) -> None:
    before = dump(client)
    for field_number in (3, 5, 9, 13, 16, 20):  # nic_del, nic_details, sg_del, ... as raw bytes
        tag = field_number << 3 | 2
        raw = (bytes([tag]) if tag < 0x80 else bytes([tag & 0x7F | 0x80, tag >> 7])) + bytes(
            [3, 0xFF, 0xFE, 0x2F]
        )
        inner = MessageV0.Request()
        inner.ParseFromString(raw)
        answer = client.call(inner)
        assert answer.HasField("response")
    ok(client, nic_list=True)
    assert dump(client) == before


def test_the_start_up_reconcile_is_reported_only_when_asked(client: Client) -> None:
    """A deployed client's .proto lacks AppStatusRes.reconcile: it never gets it unasked."""
    plain = ok(client, app_status=True).app_status
    assert not plain.HasField("reconcile")
    assert b"\xc2\x07" not in plain.SerializeToString(), "field 120 on the wire"
    # The daemon answers alone for a moment before its start-up reconcile runs.
    deadline = time.monotonic() + 10
    while True:
        reply = client.call(MessageV0.Request(app_status=True, app_status_reconcile=True))
        assert reply.response.status.status
        asked = reply.response.app_status
        assert asked.HasField("reconcile")
        if not asked.reconcile.running or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not asked.reconcile.running
    assert asked.reconcile.done == asked.reconcile.total
