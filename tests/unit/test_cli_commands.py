"""Handlers against an in-memory Api, and the entry point without a daemon."""

import io
import subprocess
import sys
from collections.abc import Callable

import pytest

from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Messages
from butterfly.cli.args import COMMANDS, parse
from butterfly.cli.commands import HANDLERS, Context
from butterfly.cli.main import run
from butterfly.cli.requests import rule_hash
from butterfly.errors import BadRequest, ConfigError

Request = MessageV0.Request
Response = MessageV0.Response


class FakeApi:
    """Answers each request with ``answer(request)`` and records what was sent."""

    def __init__(self, answer: Callable[[Request], Response]) -> None:
        self._answer = answer
        self.sent: list[Request] = []

    def send(self, request: Messages) -> Messages:
        reply = Messages()
        for message in request.messages:
            self.sent.append(message.message_0.request)
            out = reply.messages.add(revision=REVISION)
            out.message_0.response.CopyFrom(self._answer(message.message_0.request))
        return reply


def ok(**fields: object) -> Response:
    response = Response(**fields)  # type: ignore[arg-type]
    response.status.status = True
    return response


def refused(description: str) -> Response:
    response = Response()
    response.status.status = False
    response.status.error.description = description
    return response


def run_handler(api: FakeApi, *argv: str) -> str:
    command = parse(list(argv)).commands[0]
    out = io.StringIO()
    HANDLERS[command.path](command, Context(api=api, out=out))
    return out.getvalue()


def nic_with_sgs(*sgs: str) -> Callable[[Request], Response]:
    def answer(request: Request) -> Response:
        if request.HasField("nic_details"):
            nic = MessageV0.Nic(id="vnic_1", mac="m", vni=1, security_group=list(sgs))
            return ok(nic_details=[nic])
        return ok()

    return answer


def test_every_command_has_a_handler() -> None:
    assert set(HANDLERS) == {spec.path for spec in COMMANDS}


def test_nic_sg_del_of_the_last_sg_really_removes_it() -> None:
    api = FakeApi(nic_with_sgs("web"))
    run_handler(api, "nic", "sg", "del", "vnic_1", "web")
    assert [r.WhichOneof("request") for r in api.sent] == ["nic_details", "nic_update"]
    assert list(api.sent[1].nic_update.security_group) == [""]


def test_nic_sg_add_and_del_send_nothing_when_nothing_changes() -> None:
    api = FakeApi(nic_with_sgs("web"))
    run_handler(api, "nic", "sg", "add", "vnic_1", "web")
    run_handler(api, "nic", "sg", "del", "vnic_1", "other")
    assert [r.WhichOneof("request") for r in api.sent] == ["nic_details", "nic_details"]


def test_nic_sg_add_appends_to_the_current_list() -> None:
    api = FakeApi(nic_with_sgs("b"))
    run_handler(api, "nic", "sg", "add", "vnic_1", "a", "b", "c")
    assert list(api.sent[1].nic_update.security_group) == ["b", "a", "c"]


def test_nic_sg_set_without_sg_clears_them() -> None:
    api = FakeApi(nic_with_sgs())
    run_handler(api, "nic", "sg", "set", "vnic_1")
    assert list(api.sent[0].nic_update.security_group) == [""]


def test_rule_del_by_hash_sends_the_listed_rule() -> None:
    rule = MessageV0.Rule(direction=MessageV0.Rule.INBOUND, protocol=-1, security_group="web")

    def answer(request: Request) -> Response:
        return ok(sg_rule_list=[rule]) if request.HasField("sg_rule_list") else ok()

    api = FakeApi(answer)
    run_handler(api, "sg", "rule", "del", "web", rule_hash(rule))
    assert api.sent[1].sg_rule_del.rule == rule
    with pytest.raises(BadRequest, match="no rule found with hash 0000 in security group web"):
        run_handler(api, "sg", "rule", "del", "web", "0000")


def test_several_names_go_in_one_frame() -> None:
    api = FakeApi(lambda request: ok())
    run_handler(api, "nic", "del", "a", "b")
    run_handler(api, "sg", "member", "add", "web", "10.0.0.1", "10.0.0.2")
    assert [r.WhichOneof("request") for r in api.sent] == [
        "nic_del",
        "nic_del",
        "sg_member_add",
        "sg_member_add",
    ]


def test_a_refusal_carries_the_daemons_words() -> None:
    api = FakeApi(lambda request: refused("NIC does not exist with id x"))
    with pytest.raises(BadRequest, match=r"^NIC does not exist with id x$"):
        run_handler(api, "nic", "stats", "x")


def test_nic_add_prints_the_path_when_there_is_one() -> None:
    def answer(request: Request) -> Response:
        response = ok()
        response.nic_add.path = "/run/qemu-vhost-a"
        return response

    argv = ("nic", "add", "--id", "a", "--mac", "m", "--vni", "1")
    assert run_handler(FakeApi(answer), *argv) == "/run/qemu-vhost-a\n"
    assert run_handler(FakeApi(lambda request: ok()), *argv) == ""


def test_request_reports_the_first_refused_message(tmp_path: object) -> None:
    path = f"{tmp_path}/requests.txt"
    with open(path, "w", encoding="utf-8") as file:
        file.write(
            f'messages {{ revision: {REVISION} message_0 {{ request {{ sg_del: "a" }} }} }}\n'
            f'messages {{ revision: {REVISION} message_0 {{ request {{ nic_del: "b" }} }} }}\n'
        )
    api = FakeApi(lambda request: refused("boom"))
    with pytest.raises(BadRequest, match=r"^message 1 \(sg_del\): boom \(2 of 2 failed\)$"):
        run_handler(api, "request", path)


def test_request_of_a_missing_file() -> None:
    with pytest.raises(ConfigError, match="failed to open /nonexistent/f: No such file"):
        run_handler(FakeApi(lambda request: ok()), "request", "/nonexistent/f")


def test_status_svg_without_dot(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    api = FakeApi(lambda request: ok(app_status=MessageV0.AppStatusRes(graph_dot="digraph {}")))
    with pytest.raises(ConfigError, match="Graphviz's dot is not installed"):
        run_handler(api, "status", "--svg", f"{tmp_path}/g.svg")


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_main_help_and_version_need_no_daemon() -> None:
    status, out, err = run_main("nic", "add", "help")
    assert (status, err) == (0, "")
    assert out.startswith("usage: butterfly nic add [options...]\n")
    assert run_main("-V") == (0, "butterfly 0.1.0\n", "")


def test_main_usage_errors_are_one_line() -> None:
    usage = (1, "", "butterfly: nic add: --mac is mandatory\n")
    assert run_main("nic", "add", "--id", "a") == usage
    assert run_main("nic", "bogus") == (1, "", "butterfly: invalid nic subcommand 'bogus'\n")


def test_main_bad_key_file_fails_before_anything_is_sent(tmp_path: object) -> None:
    key = f"{tmp_path}/key"
    with open(key, "w", encoding="ascii") as file:
        file.write("dG9vIHNob3J0\n")
    status, out, err = run_main("-k", key, "nic", "list")
    assert (status, out) == (1, "")
    assert err == (
        f"butterfly: nic list: key file {key}: decodes to 9 bytes, an AES-256 key needs 32\n"
    )


def test_the_cli_imports_no_store_service_dataplane_or_daemon() -> None:
    probe = (
        "import sys, butterfly.cli.main; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['butterfly', 'store'], ['butterfly', 'service'], ['butterfly', 'dataplane'], "
        "['butterfly', 'daemon'], ['butterfly', 'vhost'])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout == "[]\n"
