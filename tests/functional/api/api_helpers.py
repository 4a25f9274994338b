"""Small builders and assertions for the API tests (not fixtures: plain functions)."""

import base64
from typing import Any

from google.protobuf import text_format

from butterfly.api.client import Client
from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Messages

Request = MessageV0.Request
Response = MessageV0.Response
Nic = MessageV0.Nic
Rule = MessageV0.Rule
Sg = MessageV0.Sg

INBOUND = MessageV0.Rule.INBOUND
OUTBOUND = MessageV0.Rule.OUTBOUND


def nic(
    nic_id: str,
    *,
    mac: str = "52:54:00:00:00:01",
    vni: int = 42,
    ips: tuple[str, ...] = (),
    sgs: tuple[str, ...] = (),
    **fields: Any,
) -> MessageV0.Nic:
    return Nic(id=nic_id, mac=mac, vni=vni, ip=list(ips), security_group=list(sgs), **fields)


def rule(
    *,
    direction: int = INBOUND,
    protocol: int = -1,
    ports: tuple[int, int] | None = None,
    cidr: tuple[str, int] | None = None,
    sg: str | None = None,
) -> MessageV0.Rule:
    out = Rule(direction=direction, protocol=protocol)  # type: ignore[arg-type]
    if ports is not None:
        out.port_start, out.port_end = ports
    if cidr is not None:
        out.cidr.address, out.cidr.mask_size = cidr
    if sg is not None:
        out.security_group = sg
    return out


def request(**field: Any) -> MessageV0.Request:
    """A Request with exactly the one field given (``nic_list=True``, ...)."""
    assert len(field) == 1, field
    return Request(**field)


def call(client: Client, **field: Any) -> MessageV0.Response:
    return client.call(request(**field)).response


def ok(client: Client, **field: Any) -> MessageV0.Response:
    """The response of a request that must succeed."""
    response = call(client, **field)
    assert response.status.status, (field, response.status.error.description)
    return response


def fail(client: Client, **field: Any) -> str:
    """The error description of a request that must fail."""
    response = call(client, **field)
    assert not response.status.status, (field, response)
    description = response.status.error.description
    assert description, response
    return description


def frame(*requests: MessageV0.Request, message_ids: list[str | None] | None = None) -> Messages:
    """One envelope holding several requests."""
    envelope = Messages()
    for index, one in enumerate(requests):
        message = envelope.messages.add(revision=REVISION)
        message.message_0.request.CopyFrom(one)
        if message_ids is not None and message_ids[index] is not None:
            message.message_0.message_id = message_ids[index]
    return envelope


def dump(client: Client) -> str:
    """Everything the daemon holds, as text: every nic, every SG, the VNI peers.

    Two equal dumps mean two equal states (listings are sorted by id).
    """
    parts = []
    for name in ("nic_details", "sg_details"):
        response = ok(client, **{name: ""})
        parts.append(f"{name}:\n{text_format.MessageToString(response)}")
    peers = ok(client, vni_peer_list=True)
    parts.append(f"vni_peer_list:\n{text_format.MessageToString(peers)}")
    return "\n".join(parts)


def text(message: Any) -> str:
    return str(text_format.MessageToString(message))


def write_key(path: str, key: bytes) -> str:
    """A key file as ``openssl rand -base64 32`` writes it; returns its path."""
    with open(path, "wb") as file:
        file.write(base64.b64encode(key) + b"\n")
    return path
