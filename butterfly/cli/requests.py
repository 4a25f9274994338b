"""Turn parsed command arguments into protocol requests, and answers back.

Everything here is pure: it builds ``MessageV0.Request`` and ``Messages``
from :class:`butterfly.cli.args.Args` and reads the daemon's answers, so the
whole of the CLI's knowledge of the protocol is unit-testable without a
daemon. The CLI checks what the original client checked (mandatory options,
port ranges, one source per rule) and leaves the rest to the daemon, whose
description reaches the user unchanged.

It must not import the API client, the store, the service or the daemon.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf import text_format
from google.protobuf.message import EncodeError

from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Messages
from butterfly.cli.args import Args, parse_bool, parse_int
from butterfly.errors import BadRequest, ClientError, ConfigError
from butterfly.model import MAX_LIMIT, MAX_VNI, TCP, UDP, Cidr, Direction, Rule

__all__ = [
    "DUMP_NICS",
    "DUMP_PEERS",
    "DUMP_SGS",
    "Failure",
    "dump_query",
    "dump_replay",
    "envelope",
    "failures",
    "find_rule",
    "nic_add",
    "nic_sg_update",
    "nic_update",
    "parse_request_file",
    "request_name",
    "responses",
    "rule_from_args",
    "rule_hash",
    "sg_rule_del",
    "sgs_after_add",
    "sgs_after_del",
    "vni_peer",
]

Request = MessageV0.Request
Response = MessageV0.Response

DUMP_NICS = "nics"
DUMP_SGS = "sgs"
DUMP_PEERS = "peers"

_NIC_TYPES = {
    "vhost-user": MessageV0.Nic.VHOST_USER_SERVER,
    "vhost_user_server": MessageV0.Nic.VHOST_USER_SERVER,
    "tap": MessageV0.Nic.TAP,
    "netns": MessageV0.Nic.NETNS,
}

_PROTOCOLS = {"tcp": TCP, "udp": UDP, "icmp": 1, "all": -1}
_DIRECTIONS = {"in": MessageV0.Rule.INBOUND, "out": MessageV0.Rule.OUTBOUND}
_MAX_PORT = 65535
_MAX_MASK = 128


def envelope(
    requests: Sequence[Request], ids: Sequence[str] | None = None, *, additions: bool = True
) -> Messages:
    """One frame holding ``requests`` in order, tagged with ``ids`` if given.

    With ``additions``, each asks for butterfly's additions in its reply
    (``with_additions``): this CLI shows all the daemon knows; deployed
    daemons ignore the field.
    """
    messages = Messages()
    for index, request in enumerate(requests):
        message = messages.messages.add(revision=REVISION)
        message.message_0.request.CopyFrom(request)
        if additions:
            message.message_0.request.with_additions = True
        if ids is not None:
            message.message_0.message_id = ids[index]
    return messages


def request_name(request: Request) -> str:
    return request.WhichOneof("request") or "empty request"


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A request of a frame that the daemon did not carry out."""

    number: int
    request: str
    description: str

    def __str__(self) -> str:
        return f"message {self.number} ({self.request}): {self.description}"


def failures(sent: Messages, reply: Messages) -> list[Failure]:
    if len(reply.messages) != len(sent.messages):
        raise ClientError(
            f"the daemon answered {len(reply.messages)} messages"
            f" to a request of {len(sent.messages)}"
        )
    found = []
    for number, (question, answer) in enumerate(
        zip(sent.messages, reply.messages, strict=True), start=1
    ):
        what = request_name(question.message_0.request)
        if not answer.message_0.HasField("response"):
            found.append(
                Failure(number=number, request=what, description="the daemon sent no response")
            )
        elif not answer.message_0.response.status.status:
            error = answer.message_0.response.status.error
            found.append(
                Failure(
                    number=number,
                    request=what,
                    description=error.description or "failed without a description",
                )
            )
    return found


def responses(sent: Messages, reply: Messages) -> list[Response]:
    """The answers to a frame the CLI built, or the first refusal as BadRequest.

    For a single request the daemon's description is the whole message, so
    scripts that grep the deployed daemons' phrases ("Bad NIC format", ...)
    keep working.
    """
    problems = failures(sent, reply)
    if problems:
        first = problems[0]
        raise BadRequest(first.description if len(sent.messages) == 1 else str(first))
    return [message.message_0.response for message in reply.messages]


def _mandatory(args: Args, key: str) -> str:
    value = args.value(key)
    if value is None:
        raise ConfigError(f"--{key} is mandatory")
    return value


def _trace(args: Args) -> tuple[bool | None, str | None]:
    """--packet-trace and --trace-path, checked together as the original does."""
    text = args.value("packet-trace")
    trace = None if text is None else parse_bool(text, what="--packet-trace")
    path = args.value("trace-path")
    if path is not None and trace is not True:
        raise ConfigError("--trace-path needs --packet-trace true")
    return trace, path


def _limits(args: Args) -> dict[str, int]:
    """--max-connections and --max-new-connections, as Nic/NicUpdateReq fields."""
    return {
        option.replace("-", "_"): parse_int(text, what=f"--{option}", low=0, high=MAX_LIMIT)
        for option in ("max-connections", "max-new-connections")
        if (text := args.value(option)) is not None
    }


def nic_add(args: Args) -> Request:
    nic = MessageV0.Nic(
        id=_mandatory(args, "id"),
        mac=_mandatory(args, "mac"),
        vni=parse_int(_mandatory(args, "vni"), what="--vni", low=0, high=MAX_VNI),
        ip=args.all_values("ip"),
        security_group=args.all_values("sg"),
        ip_anti_spoof=args.flag("enable-antispoof"),
        bypass_filtering=args.flag("bypass-filtering"),
    )
    type_text = args.value("type") or "vhost-user"
    nic_type = _NIC_TYPES.get(type_text.lower())
    if nic_type is None:
        raise ConfigError(f"--type {type_text!r} is not vhost-user, tap or netns")
    nic.type = nic_type
    path = args.value("path")
    if nic_type == MessageV0.Nic.NETNS:
        if not path:
            raise ConfigError("--type netns needs --path NETNS (a name or a path)")
        nic.path = path
    elif path is not None:
        raise ConfigError("--path is only for --type netns")
    trace, trace_path = _trace(args)
    if trace is not None:
        nic.packet_trace = trace
    if trace_path is not None:
        nic.packet_trace_path = trace_path
    for name, value in _limits(args).items():
        setattr(nic, name, value)
    return Request(nic_add=nic)


def nic_update(args: Args) -> Request:
    update = MessageV0.NicUpdateReq(id=_mandatory(args, "id"))
    ips = args.all_values("ip")
    if "" in ips and len(ips) > 1:
        raise ConfigError("--ip '' removes all ips and cannot be given with other --ip")
    update.ip.extend(ips)
    antispoof = args.value("enable-antispoof")
    if antispoof is not None:
        update.ip_anti_spoof = parse_bool(antispoof, what="--enable-antispoof")
    trace, trace_path = _trace(args)
    if trace is not None:
        update.packet_trace = trace
    if trace_path is not None:
        update.packet_trace_path = trace_path
    limits = _limits(args)
    for name, value in limits.items():
        setattr(update, name, value)
    if not (ips or antispoof is not None or trace is not None or limits):
        raise ConfigError(
            "nothing to update: give --ip, --enable-antispoof, --packet-trace, --trace-path,"
            " --max-connections or --max-new-connections"
        )
    return Request(nic_update=update)


def sgs_after_add(current: Sequence[str], added: Iterable[str]) -> list[str] | None:
    """The nic's new SG list, or None when it already holds them all."""
    wanted = list(dict.fromkeys([*current, *added]))
    return None if wanted == list(current) else wanted


def sgs_after_del(current: Sequence[str], removed: Iterable[str]) -> list[str] | None:
    """The nic's new SG list, or None when it holds none of ``removed``."""
    gone = set(removed)
    wanted = [sg for sg in current if sg not in gone]
    return None if len(wanted) == len(current) else wanted


def nic_sg_update(nic_id: str, sgs: Sequence[str]) -> Request:
    """Set the SGs of a nic; an empty list is sent as [""], which clears them.

    The original client sent no security_group at all for an empty list,
    which the daemon reads as "leave the SGs alone": the last SG never left.
    """
    return Request(nic_update=MessageV0.NicUpdateReq(id=nic_id, security_group=list(sgs) or [""]))


def _port(args: Args, key: str) -> int | None:
    text = args.value(key)
    return None if text is None else parse_int(text, what=f"--{key}", low=0, high=_MAX_PORT)


def _cidr(text: str) -> MessageV0.Cidr:
    address, slash, mask = text.partition("/")
    if not address or not slash or not mask:
        raise ConfigError(f"--cidr format not recognized: {text!r} is not ADDRESS/MASK")
    return MessageV0.Cidr(
        address=address, mask_size=parse_int(mask, what="--cidr mask", low=0, high=_MAX_MASK)
    )


def rule_from_args(args: Args) -> MessageV0.Rule:
    """The rule that ``sg rule add`` options describe."""
    direction_text = args.value("dir") or "in"
    direction = _DIRECTIONS.get(direction_text)
    if direction is None:
        raise ConfigError(f"--dir argument not recognized: {direction_text!r} (in or out)")
    proto_text = _mandatory(args, "ip-proto")
    protocol = _PROTOCOLS.get(proto_text.lower())
    if protocol is None:
        protocol = parse_int(proto_text, what="--ip-proto", low=-1, high=255)
    rule = MessageV0.Rule(direction=direction, protocol=protocol)

    single = _port(args, "port")
    start, end = _port(args, "port-start"), _port(args, "port-end")
    if single is not None:
        if start is not None or end is not None:
            raise ConfigError("--port cannot be given with --port-start or --port-end")
        start = end = single
    if protocol in (TCP, UDP):
        if start is None or end is None:
            raise ConfigError(
                "wrong port configuration: tcp and udp need --port, or --port-start and --port-end"
            )
        if start > end:
            raise ConfigError(
                f"wrong port configuration: --port-start {start} is above --port-end {end}"
            )
        rule.port_start, rule.port_end = start, end
    elif start is not None or end is not None:
        raise ConfigError("wrong port configuration: ports apply to tcp and udp only")

    cidr, members = args.value("cidr"), args.value("sg-members")
    if cidr is not None and members is not None:
        raise ConfigError("--cidr can't be set with --sg-members")
    if cidr is not None:
        rule.cidr.CopyFrom(_cidr(cidr))
    elif members is not None:
        rule.security_group = members
    else:
        raise ConfigError("you must set --cidr or --sg-members")
    return rule


_RULE_KEYS = ("dir", "ip-proto", "port", "port-start", "port-end", "cidr", "sg-members")


def sg_rule_del(args: Args) -> Request | str:
    """The deletion the options describe, or the RULE_HASH to look up first."""
    rule_hash_text = args.maybe_word("RULE_HASH")
    has_options = any(key in args.values for key in _RULE_KEYS)
    if rule_hash_text is not None:
        if has_options:
            raise ConfigError("give RULE_HASH or the rule's options, not both")
        return rule_hash_text
    if not has_options:
        raise ConfigError("missing RULE_HASH or the rule's options")
    return Request(
        sg_rule_del=MessageV0.SgRuleDelReq(sg_id=args.word("SG"), rule=rule_from_args(args))
    )


def rule_hash(rule: MessageV0.Rule) -> str:
    """The name ``sg rule list`` prints for a rule (the model's stable digest)."""
    return Rule(
        direction=Direction(rule.direction),
        protocol=rule.protocol,
        port_start=rule.port_start if rule.HasField("port_start") else None,
        port_end=rule.port_end if rule.HasField("port_end") else None,
        cidr=(Cidr(rule.cidr.address, rule.cidr.mask_size) if rule.HasField("cidr") else None),
        security_group=rule.security_group if rule.HasField("security_group") else None,
    ).hash


def find_rule(rules: Iterable[MessageV0.Rule], wanted: str) -> MessageV0.Rule | None:
    return next((rule for rule in rules if rule_hash(rule) == wanted), None)


def vni_peer(args: Args) -> MessageV0.VniPeerReq:
    return MessageV0.VniPeerReq(
        vni=parse_int(args.word("VNI"), what="VNI", low=0, high=MAX_VNI),
        peer=args.word("PEER_IP"),
    )


def dump_query() -> Messages:
    """One frame asking for everything ``dump`` needs."""
    return envelope(
        [Request(sg_details=""), Request(nic_details=""), Request(vni_peer_list=True)],
        ids=[DUMP_SGS, DUMP_NICS, DUMP_PEERS],
    )


def dump_replay(
    sgs: Iterable[MessageV0.Sg],
    nics: Iterable[MessageV0.Nic],
    peers: Iterable[MessageV0.VniPeers],
) -> Messages:
    """The requests that rebuild a configuration: SGs, then nics, then peers.

    SGs come first so that no nic ever names a group that does not exist
    yet. Fields the daemon fills in (a vhost-user socket or tap name, the
    MTU) are left out: they belong to the daemon that is replayed into.
    """
    requests = [Request(sg_add=sg) for sg in sgs]
    for details in nics:
        nic = MessageV0.Nic()
        nic.CopyFrom(details)
        if nic.type != MessageV0.Nic.NETNS:
            nic.ClearField("path")
        nic.ClearField("mtu")
        requests.append(Request(nic_add=nic))
    for group in peers:
        requests.extend(
            Request(vni_peer_add=MessageV0.VniPeerReq(vni=group.vni, peer=peer))
            for peer in group.peer
        )
    # Requests to replay, not questions: a file a deployed client can read
    # too, when the state needs nothing only we can say (netns, peers).
    return envelope(requests, additions=False)


def parse_request_file(text: str, path: str) -> Messages:
    """The Messages a ``request`` file holds, in protobuf text format."""
    messages = Messages()
    try:
        text_format.Parse(text, messages)
    except text_format.ParseError as error:
        raise ConfigError(f"{path}: {error}") from error
    try:
        messages.SerializeToString()
    except EncodeError as error:
        raise ConfigError(f"{path}: {error}") from error
    if not messages.messages:
        raise ConfigError(f"{path}: holds no messages")
    return messages
