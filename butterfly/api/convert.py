"""Protobuf messages to model objects and back.

Pure functions, no config and no service: what the wire says becomes a model
object (validated by the model's ``make_*`` functions), and model objects
become what the wire answers.
"""

from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.errors import BadNic, BadRule, shown
from butterfly.model import (
    Rule,
    SecurityGroup,
    Vnic,
    VnicType,
    VnicUpdate,
    check_sg_id,
    make_rule,
    make_security_group,
)
from butterfly.service import Attachment

__all__ = [
    "nic_to_proto",
    "rule_from_proto",
    "rule_to_proto",
    "sg_from_proto",
    "sg_to_proto",
    "update_from_proto",
    "vnic_from_proto",
]


def _enum_as_sent(message: Message, field_number: int, parsed: int) -> int:
    """An enum field's number as the peer sent it.

    proto2 enums are closed: the parser moves a number outside the enum to
    the unknown fields and leaves the field unset (reading as its default),
    so without this an unknown nic type would silently read VHOST_USER_SERVER.
    (A required enum, such as a rule's direction, fails to parse instead.)
    """
    unknown = UnknownFieldSet(message)
    for index in range(len(unknown)):
        field = unknown[index]
        if field.field_number == field_number and isinstance(field.data, int):
            return field.data
    return parsed


def vnic_from_proto(nic: MessageV0.Nic) -> Vnic:
    """The Vnic a nic_add asks for (not yet validated: the service does it)."""
    type_number = _enum_as_sent(nic, 9, nic.type)
    if type_number not in VnicType._value2member_map_:
        raise BadNic(f"nic {shown(nic.id)}: type {type_number} is unknown")
    vnic_type = VnicType(type_number)
    return Vnic(
        id=nic.id,
        mac=nic.mac,
        vni=nic.vni,
        ips=tuple(nic.ip),
        security_groups=tuple(nic.security_group),
        ip_anti_spoof=nic.ip_anti_spoof,
        bypass_filtering=nic.bypass_filtering,
        type=vnic_type,
        netns=nic.path if vnic_type == VnicType.NETNS else "",
        packet_trace=nic.packet_trace if nic.HasField("packet_trace") else None,
        packet_trace_path=nic.packet_trace_path,
        sniff_target_nic_id=nic.sniff_target_nic_id,
        max_connections=nic.max_connections if nic.HasField("max_connections") else None,
        max_new_connections=(
            nic.max_new_connections if nic.HasField("max_new_connections") else None
        ),
    )


def _replacement_list(values: list[str]) -> tuple[str, ...] | None:
    """nic_update's list rule: absent keeps, one empty string clears, else replaces."""
    if not values:
        return None
    return tuple(value for value in values if value != "")


def update_from_proto(update: MessageV0.NicUpdateReq) -> VnicUpdate:
    return VnicUpdate(
        id=update.id,
        ips=_replacement_list(list(update.ip)),
        security_groups=_replacement_list(list(update.security_group)),
        ip_anti_spoof=update.ip_anti_spoof if update.HasField("ip_anti_spoof") else None,
        packet_trace=update.packet_trace if update.HasField("packet_trace") else None,
        packet_trace_path=(
            update.packet_trace_path if update.HasField("packet_trace_path") else None
        ),
        max_connections=update.max_connections if update.HasField("max_connections") else None,
        max_new_connections=(
            update.max_new_connections if update.HasField("max_new_connections") else None
        ),
    )


def nic_to_proto(vnic: Vnic, attachment: Attachment, out: MessageV0.Nic) -> None:
    out.id = vnic.id
    out.mac = vnic.mac
    out.vni = vnic.vni
    out.ip.extend(vnic.ips)
    out.security_group.extend(vnic.security_groups)
    out.ip_anti_spoof = vnic.ip_anti_spoof
    if vnic.sniff_target_nic_id:
        out.sniff_target_nic_id = vnic.sniff_target_nic_id
    out.bypass_filtering = vnic.bypass_filtering
    out.type = int(vnic.type)  # type: ignore[assignment]
    out.path = attachment.path
    out.packet_trace = attachment.packet_trace
    out.packet_trace_path = attachment.packet_trace_path
    if attachment.mtu is not None:
        out.mtu = attachment.mtu
    if vnic.max_connections is not None:
        out.max_connections = vnic.max_connections
    if vnic.max_new_connections is not None:
        out.max_new_connections = vnic.max_new_connections


def rule_from_proto(sg_id: str, rule: MessageV0.Rule) -> Rule:
    """A validated rule of ``sg_id``."""
    check_sg_id(sg_id)
    if rule.HasField("cidr") and rule.HasField("security_group"):
        raise BadRule(
            f"security group {shown(sg_id)}: a rule needs exactly one of cidr and security_group"
        )
    return make_rule(
        sg_id,
        direction=rule.direction,
        protocol=rule.protocol,
        port_start=rule.port_start if rule.HasField("port_start") else None,
        port_end=rule.port_end if rule.HasField("port_end") else None,
        cidr=(rule.cidr.address, rule.cidr.mask_size) if rule.HasField("cidr") else None,
        security_group=rule.security_group if rule.HasField("security_group") else None,
    )


def rule_to_proto(rule: Rule, out: MessageV0.Rule) -> None:
    out.direction = int(rule.direction)  # type: ignore[assignment]
    out.protocol = rule.protocol
    if rule.port_start is not None:
        out.port_start = rule.port_start
    if rule.port_end is not None:
        out.port_end = rule.port_end
    if rule.cidr is not None:
        out.cidr.address = rule.cidr.address
        out.cidr.mask_size = rule.cidr.mask_size
    if rule.security_group is not None:
        out.security_group = rule.security_group


def sg_from_proto(sg: MessageV0.Sg) -> SecurityGroup:
    check_sg_id(sg.id)
    rules = [rule_from_proto(sg.id, rule) for rule in sg.rule]
    return make_security_group(sg.id, members=list(sg.member), rules=rules)


def sg_to_proto(sg: SecurityGroup, out: MessageV0.Sg) -> None:
    out.id = sg.id
    out.member.extend(sg.members)
    for rule in sg.rules:
        rule_to_proto(rule, out.rule.add())
