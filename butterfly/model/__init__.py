"""The pure model: vnics, security groups, rules, addresses and the state.

No I/O, no globals, no kernel names; imports nothing of butterfly but
``errors``. Everything here can be tested without root.
"""

from butterfly.model.addresses import Cidr, canonical_ip
from butterfly.model.security_group import (
    ALL_PROTOCOLS,
    TCP,
    UDP,
    Direction,
    Rule,
    SecurityGroup,
    check_sg_id,
    make_member,
    make_rule,
    make_security_group,
)
from butterfly.model.state import State, StateView
from butterfly.model.vnic import MAX_LIMIT, MAX_VNI, Vnic, VnicType, VnicUpdate, make_vnic

__all__ = [
    "ALL_PROTOCOLS",
    "MAX_LIMIT",
    "MAX_VNI",
    "TCP",
    "UDP",
    "Cidr",
    "Direction",
    "Rule",
    "SecurityGroup",
    "State",
    "StateView",
    "Vnic",
    "VnicType",
    "VnicUpdate",
    "canonical_ip",
    "check_sg_id",
    "make_member",
    "make_rule",
    "make_security_group",
    "make_vnic",
]
