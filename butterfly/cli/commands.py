"""One handler per command of the ``butterfly`` CLI.

Every handler has the same shape: build the request from the parsed
arguments (:mod:`butterfly.cli.requests`), send it through the context's
:class:`~butterfly.cli.session.Api`, and write the answer formatted by
:mod:`butterfly.cli.output`. A handler raises a ButterflyError to fail; it
never prints errors nor exits (that is :mod:`butterfly.cli.main`'s job).
"""

import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

from butterfly.api import curve
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.cli import output, requests
from butterfly.cli.args import Command
from butterfly.cli.session import Api
from butterfly.errors import BadRequest, ClientError, ConfigError

__all__ = ["HANDLERS", "Context", "Handler"]

Request = MessageV0.Request
Response = MessageV0.Response


@dataclass(frozen=True, kw_only=True)
class Context:
    api: Api
    out: TextIO


Handler = Callable[[Command, Context], None]


def _ask(api: Api, *batch: Request) -> list[Response]:
    """Send requests in one frame; BadRequest with the daemon's words if one fails."""
    sent = requests.envelope(batch)
    return requests.responses(sent, api.send(sent))


def _ask_one(api: Api, request: Request) -> Response:
    return _ask(api, request)[0]


def _json(command: Command) -> bool:
    return command.args.flag("json")


def nic_list(command: Command, ctx: Context) -> None:
    response = _ask_one(ctx.api, Request(nic_list=True))
    ctx.out.write(output.ids(response.nic_list, as_json=_json(command)))


def nic_stats(command: Command, ctx: Context) -> None:
    response = _ask_one(ctx.api, Request(nic_stats=command.args.word("NIC")))
    if not response.HasField("nic_stats"):
        raise ClientError("no nic stats received")
    ctx.out.write(output.nic_stats(response.nic_stats, as_json=_json(command)))


def _details(api: Api, nic_id: str) -> MessageV0.Nic:
    response = _ask_one(api, Request(nic_details=nic_id))
    if not response.nic_details:
        raise ClientError("no nic details received")
    return response.nic_details[0]


def nic_details(command: Command, ctx: Context) -> None:
    response = _ask_one(ctx.api, Request(nic_details=command.args.word("NIC")))
    if not response.nic_details:
        raise ClientError("no nic details received")
    nic = response.nic_details[0]
    ctx.out.write(output.nic_details(nic, as_json=_json(command)))


def nic_add(command: Command, ctx: Context) -> None:
    """Print the path the daemon made (a vhost-user socket, a tap name).

    The original failed when the answer held no path; the nic exists by
    then, so we succeed and print nothing.
    """
    response = _ask_one(ctx.api, requests.nic_add(command.args))
    if response.nic_add.HasField("path"):
        ctx.out.write(f"{response.nic_add.path}\n")


def nic_update(command: Command, ctx: Context) -> None:
    _ask_one(ctx.api, requests.nic_update(command.args))


def nic_export(command: Command, ctx: Context) -> None:
    response = _ask_one(ctx.api, Request(nic_export=command.args.word("NIC")))
    path = command.args.word("FILE")
    try:
        with open(path, "wb") as file:
            file.write(response.nic_export.fw_data.data)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror}") from error


def nic_import(command: Command, ctx: Context) -> None:
    path = command.args.word("FILE")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from error
    nic_id = command.args.word("NIC")
    _ask_one(ctx.api, Request(nic_import=MessageV0.NicImportReq(id=nic_id, data=data)))


def nic_del(command: Command, ctx: Context) -> None:
    _ask(ctx.api, *(Request(nic_del=nic) for nic in command.args.all_words("NIC")))


def nic_sg_list(command: Command, ctx: Context) -> None:
    nic = _details(ctx.api, command.args.word("NIC"))
    ctx.out.write(output.ids(nic.security_group, as_json=_json(command)))


def nic_sg_add(command: Command, ctx: Context) -> None:
    nic_id = command.args.word("NIC")
    current = _details(ctx.api, nic_id).security_group
    wanted = requests.sgs_after_add(current, command.args.all_words("SG"))
    if wanted is not None:
        _ask_one(ctx.api, requests.nic_sg_update(nic_id, wanted))


def nic_sg_del(command: Command, ctx: Context) -> None:
    nic_id = command.args.word("NIC")
    current = _details(ctx.api, nic_id).security_group
    wanted = requests.sgs_after_del(current, command.args.all_words("SG"))
    if wanted is not None:
        _ask_one(ctx.api, requests.nic_sg_update(nic_id, wanted))


def nic_sg_set(command: Command, ctx: Context) -> None:
    wanted = list(dict.fromkeys(command.args.all_words("SG")))
    _ask_one(ctx.api, requests.nic_sg_update(command.args.word("NIC"), wanted))


def sg_list(command: Command, ctx: Context) -> None:
    response = _ask_one(ctx.api, Request(sg_list=True))
    ctx.out.write(output.ids(response.sg_list, as_json=_json(command)))


def sg_add(command: Command, ctx: Context) -> None:
    _ask(ctx.api, *(Request(sg_add=MessageV0.Sg(id=sg)) for sg in command.args.all_words("SG")))


def sg_del(command: Command, ctx: Context) -> None:
    _ask(ctx.api, *(Request(sg_del=sg) for sg in command.args.all_words("SG")))


def sg_rule_list(command: Command, ctx: Context) -> None:
    response = _ask_one(ctx.api, Request(sg_rule_list=command.args.word("SG")))
    ctx.out.write(output.rules(response.sg_rule_list, as_json=_json(command)))


def sg_rule_add(command: Command, ctx: Context) -> None:
    rule = requests.rule_from_args(command.args)
    add = MessageV0.SgRuleAddReq(sg_id=command.args.word("SG"), rule=rule)
    _ask_one(ctx.api, Request(sg_rule_add=add))


def sg_rule_del(command: Command, ctx: Context) -> None:
    sg_id = command.args.word("SG")
    deletion = requests.sg_rule_del(command.args)
    if isinstance(deletion, str):
        listed = _ask_one(ctx.api, Request(sg_rule_list=sg_id)).sg_rule_list
        rule = requests.find_rule(listed, deletion)
        if rule is None:
            raise BadRequest(f"no rule found with hash {deletion} in security group {sg_id}")
        deletion = Request(sg_rule_del=MessageV0.SgRuleDelReq(sg_id=sg_id, rule=rule))
    _ask_one(ctx.api, deletion)


def sg_member_list(command: Command, ctx: Context) -> None:
    response = _ask_one(ctx.api, Request(sg_member_list=command.args.word("SG")))
    ctx.out.write(output.ids(response.sg_member_list, as_json=_json(command)))


def sg_member_add(command: Command, ctx: Context) -> None:
    sg_id = command.args.word("SG")
    _ask(
        ctx.api,
        *(
            Request(sg_member_add=MessageV0.SgMemberAddReq(sg_id=sg_id, member=ip))
            for ip in command.args.all_words("IP")
        ),
    )


def sg_member_del(command: Command, ctx: Context) -> None:
    sg_id = command.args.word("SG")
    _ask(
        ctx.api,
        *(
            Request(sg_member_del=MessageV0.SgMemberDelReq(sg_id=sg_id, member=ip))
            for ip in command.args.all_words("IP")
        ),
    )


def vni_peer_list(command: Command, ctx: Context) -> None:
    response = _ask_one(ctx.api, Request(vni_peer_list=True))
    ctx.out.write(output.vni_peers(response.vni_peer_list, as_json=_json(command)))


def vni_peer_add(command: Command, ctx: Context) -> None:
    _ask_one(ctx.api, Request(vni_peer_add=requests.vni_peer(command.args)))


def vni_peer_del(command: Command, ctx: Context) -> None:
    _ask_one(ctx.api, Request(vni_peer_del=requests.vni_peer(command.args)))


def _render_svg(graph: str, path: str) -> None:
    dot = shutil.which("dot")
    if dot is None:
        raise ConfigError(
            f"--svg {path}: Graphviz's dot is not installed (install graphviz to render SVG)"
        )
    try:
        result = subprocess.run(
            [dot, "-Tsvg", "-o", path],
            input=graph,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as error:
        raise ConfigError(f"--svg {path}: cannot run {dot}: {error.strerror}") from error
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()
        raise ConfigError(
            f"--svg {path}: dot failed: {reason[0] if reason else f'status {result.returncode}'}"
        )


def status(command: Command, ctx: Context) -> None:
    request = Request(app_status=True, app_status_reconcile=True, app_status_drift=True)
    response = _ask_one(ctx.api, request)
    if not response.HasField("app_status"):
        raise ClientError("no status received")
    ctx.out.write(output.status(response.app_status, as_json=_json(command)))
    svg = command.args.value("svg")
    if svg is not None:
        if not response.app_status.graph_dot:
            raise ClientError("the daemon's status holds no dot graph to render")
        _render_svg(response.app_status.graph_dot, svg)


def shutdown(command: Command, ctx: Context) -> None:
    _ask_one(ctx.api, Request(app_quit=True))


def request(command: Command, ctx: Context) -> None:
    """Send a file of requests as one frame, as the original did.

    Unlike the original, a request the daemon refuses fails the command.
    """
    path = command.args.word("REQUEST_FILE")
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        raise ConfigError(f"failed to open {path}: {reason}") from error
    sent = requests.parse_request_file(text, path)
    reply = ctx.api.send(sent)
    if command.args.flag("stdout"):
        ctx.out.write(output.protobuf_text(reply))
    problems = requests.failures(sent, reply)
    if problems:
        more = f" ({len(problems)} of {len(sent.messages)} failed)" if len(problems) > 1 else ""
        raise BadRequest(f"{problems[0]}{more}")


def dump(command: Command, ctx: Context) -> None:
    sent = requests.dump_query()
    sgs, nics, peers = requests.responses(sent, ctx.api.send(sent))
    replay = requests.dump_replay(sgs.sg_details, nics.nic_details, peers.vni_peer_list)
    ctx.out.write(output.protobuf_text(replay))


def curve_keygen(command: Command, ctx: Context) -> None:
    public, secret = curve.generate(command.args.word("DIR"), command.args.word("NAME"))
    ctx.out.write(f"public key: {public}\nsecret key: {secret}\n")


HANDLERS: Mapping[tuple[str, ...], Handler] = {
    ("nic", "list"): nic_list,
    ("nic", "stats"): nic_stats,
    ("nic", "details"): nic_details,
    ("nic", "add"): nic_add,
    ("nic", "update"): nic_update,
    ("nic", "export"): nic_export,
    ("nic", "import"): nic_import,
    ("nic", "del"): nic_del,
    ("nic", "sg", "list"): nic_sg_list,
    ("nic", "sg", "add"): nic_sg_add,
    ("nic", "sg", "del"): nic_sg_del,
    ("nic", "sg", "set"): nic_sg_set,
    ("sg", "list"): sg_list,
    ("sg", "add"): sg_add,
    ("sg", "del"): sg_del,
    ("sg", "rule", "list"): sg_rule_list,
    ("sg", "rule", "add"): sg_rule_add,
    ("sg", "rule", "del"): sg_rule_del,
    ("sg", "member", "list"): sg_member_list,
    ("sg", "member", "add"): sg_member_add,
    ("sg", "member", "del"): sg_member_del,
    ("vni", "peer", "list"): vni_peer_list,
    ("vni", "peer", "add"): vni_peer_add,
    ("vni", "peer", "del"): vni_peer_del,
    ("status",): status,
    ("shutdown",): shutdown,
    ("request",): request,
    ("dump",): dump,
    ("curve", "keygen"): curve_keygen,
}
