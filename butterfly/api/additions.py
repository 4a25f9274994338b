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

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where additions can hide in one message type (computed once per type)."""

    ours: tuple[str, ...]
    """Our fields: cleared."""
    enums: tuple[FieldDescriptor, ...]
    """Upstream enum fields whose enum has values of ours: downgraded."""
    nested: tuple[FieldDescriptor, ...]
    """Upstream message fields whose type can hold additions: walked into."""

    @property
    def empty(self) -> bool:
        return not (self.ours or self.enums or self.nested)


_PLANS: dict[str, _Plan] = {}
"""A memo of :func:`_plan` by message type name (types never change at run time)."""


def _plan(descriptor: Any) -> _Plan:
    """``descriptor``: a message type (protobuf's pure-Python or upb class)."""
    plan = _PLANS.get(descriptor.full_name)
    if plan is None:
        # Ends the recursion should a type contain itself (none of the protocol does).
        _PLANS[descriptor.full_name] = _Plan((), (), ())
        fields = [field for field in descriptor.fields if field.number < FIRST_ADDITION]
        plan = _Plan(
            ours=tuple(f.name for f in descriptor.fields if f.number >= FIRST_ADDITION),
            enums=tuple(
                field
                for field in fields
                if field.enum_type is not None
                and max(value.number for value in field.enum_type.values) >= FIRST_ADDITION
            ),
            nested=tuple(
                field
                for field in fields
                if field.message_type is not None and not _plan(field.message_type).empty
            ),
        )
        _PLANS[descriptor.full_name] = plan
    return plan


def strip_additions(message: Message) -> None:
    """Make ``message`` (a reply) readable by a revision-6 peer, in place.

    Only the fields where an addition can be are visited, so a reply of
    10,000 nics costs one pass over them, not over every field they hold.
    """
    plan = _plan(message.DESCRIPTOR)
    for name in plan.ours:
        message.ClearField(name)
    for field in plan.enums:
        if message.HasField(field.name):
            _downgrade_enum(message, field, getattr(message, field.name))
    for field in plan.nested:
        if field.is_repeated:
            for item in getattr(message, field.name):
                strip_additions(item)
        elif message.HasField(field.name):
            strip_additions(getattr(message, field.name))


def _downgrade_enum(message: Message, field: FieldDescriptor, value: Any) -> None:
    """A singular enum (the protocol has no repeated one) to revision 6's closest value."""
    assert field.enum_type is not None  # an enum field always has its type
    closest = CLOSEST.get(field.enum_type.full_name, {})
    if value in closest:
        setattr(message, field.name, closest[value])
    elif value >= FIRST_ADDITION:
        message.ClearField(field.name)
