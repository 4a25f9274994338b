"""A revision-6 client, as deployed: upstream's field set only, text format in and out.

The messages come from ``upstream/*.proto`` (written from the specification's
tables, nothing of ours), compiled at run time with grpcio-tools into a
descriptor pool of their own, so they never meet butterfly's classes of the
same names. :class:`UpstreamClient` does what the C++ client's ``dump`` and
``request`` do: print replies in protobuf's text format, parse that text back.
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet
from grpc_tools import protoc

from butterfly.api.client import Client

__all__ = ["UpstreamClient", "UpstreamProtocol", "unknown_fields"]

_HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upstream")


class UpstreamProtocol:
    """Upstream's ``proto.Messages`` and ``MessageV0`` classes, compiled into ``folder``."""

    def __init__(self, folder: str) -> None:
        out = os.path.join(folder, "upstream.desc")
        status = protoc.main(
            [
                "protoc",
                f"-I{_HERE}",
                f"-I{os.path.dirname(protoc.__file__)}/_proto",
                f"--descriptor_set_out={out}",
                "--include_imports",
                "message.proto",
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {_HERE}/message.proto: status {status}")
        with open(out, "rb") as file:
            files = descriptor_pb2.FileDescriptorSet.FromString(file.read())
        pool = descriptor_pool.DescriptorPool()
        for one in files.file:
            pool.Add(one)
        self.Messages: Any = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("proto.Messages")
        )
        self.MessageV0: Any = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("MessageV0")
        )

    def parse_text(self, text: str) -> Any:
        """As ``butterfly request FILE``: the file's text into a Messages (ParseError if not)."""
        return text_format.Parse(text, self.Messages())


def unknown_fields(message: Message, where: str = "") -> list[str]:
    """Every field (by path) that ``message``'s class did not know, recursively."""
    found = [f"{where}{field.field_number}" for field in _unknown(message)]
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        items = list(value) if field.is_repeated else [value]
        for index, item in enumerate(items):
            found += unknown_fields(item, f"{where}{field.name}[{index}].")
    return found


def _unknown(message: Message) -> list[Any]:
    unknown = UnknownFieldSet(message)
    return [unknown[index] for index in range(len(unknown))]


class UpstreamClient:
    """The C++ client's ``dump`` and ``request`` against a daemon, in Python."""

    def __init__(self, protocol: UpstreamProtocol, client: Client) -> None:
        self.protocol = protocol
        self._client = client

    def send(self, request: Any) -> Any:
        """One frame; the reply parsed with upstream's classes."""
        reply = self.protocol.Messages()
        reply.ParseFromString(self._client.send_frame(request.SerializeToString()))
        return reply

    def ask(self, **fields: Any) -> tuple[Any, Any]:
        """One MessageV0 request; (its response, the whole reply frame)."""
        request = self.protocol.Messages()
        message = request.messages.add(revision=6)
        for name, value in fields.items():
            target = message.message_0.request
            if isinstance(value, Message):
                getattr(target, name).CopyFrom(value)
            else:
                setattr(target, name, value)
        reply = self.send(request)
        return reply.messages[0].message_0.response, reply

    def dump(self) -> tuple[str, list[Any]]:
        """``butterfly dump``: (the text it prints, the raw replies it read).

        The same two requests, and the same replay (one nic_add per nic's
        details as they came, then one sg_add per security group), printed
        with the C++ printer's habit of showing unknown fields by number.
        """
        query = self.protocol.parse_text(
            'messages { revision: 6 message_0 { message_id: "nics" request { nic_details: "" } } }'
            'messages { revision: 6 message_0 { message_id: "sgs" request { sg_details: "" } } }'
        )
        reply = self.send(query)
        by_id = {m.message_0.message_id: m.message_0.response for m in reply.messages}
        replay = self.protocol.Messages()
        for nic in by_id["nics"].nic_details:
            replay.messages.add(revision=6).message_0.request.nic_add.CopyFrom(nic)
        for sg in by_id["sgs"].sg_details:
            replay.messages.add(revision=6).message_0.request.sg_add.CopyFrom(sg)
        text = text_format.MessageToString(replay, print_unknown_fields=True)
        return text, [reply]

    def request(self, text: str) -> Any:
        """``butterfly request FILE``: parse the text (as upstream), send it."""
        return self.send(self.protocol.parse_text(text))
