"""Butterfly's additions to the protocol, kept out of replies nobody asked them in.

Deployed clients print replies in protobuf's text format and parse that
text back (the C++ client's ``dump`` then ``request``); text format cannot
carry a field or an enum value its reader's ``.proto`` lacks. So a reply
holds one of our additions (any field, or enum value, numbered from
:data:`FIRST_ADDITION` up) only when its request asked: the request holds
an addition itself (``with_additions``, one of our requests, one of our
fields). Otherwise :func:`strip_additions` takes our fields out and turns
our enum values into the closest value revision 6 has (shared/protocol.md).

The rule is structural, not a list of fields: an addition made later is
covered without touching this module (only a new enum value needs its
closest form in :data:`CLOSEST`, else the field is cleared to its default).
"""

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from butterfly.api.proto.message0_pb2 import MessageV0

__all__ = ["CLOSEST", "FIRST_ADDITION", "asks_for_additions", "strip_additions"]

FIRST_ADDITION = 100
"""Our field numbers and enum values start here; upstream's stay below."""

CLOSEST: dict[str, dict[int, int]] = {
    # A netns vnic is a kernel interface, as a tap one is: revision 6's TAP.
    MessageV0.Nic.Type.DESCRIPTOR.full_name: {MessageV0.Nic.NETNS: MessageV0.Nic.TAP},
}
"""Per enum type (full name): our value -> revision 6's closest value."""


def _values(field: FieldDescriptor, value: Any) -> list[Any]:
    """A field's value(s) as a list, whether it is repeated or not."""
    return list(value) if field.is_repeated else [value]


def asks_for_additions(message: Message) -> bool:
    """True when ``message`` (a request) sets any field or enum value of ours."""
    for field, value in message.ListFields():
        items = _values(field, value)
        if (
            field.number >= FIRST_ADDITION
            or (field.type == FieldDescriptor.TYPE_MESSAGE and any(map(asks_for_additions, items)))
            or (field.type == FieldDescriptor.TYPE_ENUM and max(items) >= FIRST_ADDITION)
        ):
            return True
    return False


def strip_additions(message: Message) -> None:
    """Make ``message`` (a reply) readable by a revision-6 peer, in place."""
    for field, value in message.ListFields():
        if field.number >= FIRST_ADDITION:
            message.ClearField(field.name)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in _values(field, value):
                strip_additions(item)
        elif field.type == FieldDescriptor.TYPE_ENUM:
            _downgrade_enum(message, field, value)


def _downgrade_enum(message: Message, field: FieldDescriptor, value: Any) -> None:
    """A singular enum (the protocol has no repeated one) to revision 6's closest value."""
    assert field.enum_type is not None  # an enum field always has its type
    closest = CLOSEST.get(field.enum_type.full_name, {})
    if value in closest:
        setattr(message, field.name, closest[value])
    elif value >= FIRST_ADDITION:
        message.ClearField(field.name)
