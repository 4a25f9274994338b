"""The CLI's grammar: words, options, help, chaining, and their error messages."""

import pytest

from butterfly.api.client import DEFAULT_ENDPOINT
from butterfly.cli.args import (
    COMMANDS,
    DEFAULT_TIMEOUT_MS,
    Command,
    CommandSpec,
    help_text,
    parse,
    parse_bool,
    parse_int,
)
from butterfly.errors import ConfigError


def only(argv: list[str]) -> Command:
    invocation = parse(argv)
    assert len(invocation.commands) == 1
    return invocation.commands[0]


def fails(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(argv)
    return str(caught.value)


def test_defaults_when_no_global_option() -> None:
    options = parse(["nic", "list"]).options
    assert options.endpoint == DEFAULT_ENDPOINT
    assert options.key_path is None
    assert options.timeout_ms == DEFAULT_TIMEOUT_MS
    assert not options.verbose


def test_global_options_anywhere_as_the_original_reads_them() -> None:
    invocation = parse(["-e", "tcp://h:1", "nic", "-v", "list", "--key", "k", "-t", "300"])
    assert invocation.options.endpoint == "tcp://h:1"
    assert invocation.options.key_path == "k"
    assert invocation.options.timeout_ms == 300
    assert invocation.options.verbose
    assert invocation.commands[0].path == ("nic", "list")


def test_long_options_take_an_inline_value() -> None:
    invocation = parse(["--endpoint=ipc:///x", "nic", "add", "--id=a", "--mac=m", "--vni=1"])
    assert invocation.options.endpoint == "ipc:///x"
    assert invocation.commands[0].args.value("id") == "a"


@pytest.mark.parametrize("value", ["0", "-1", "1s", ""])
def test_timeout_must_be_positive_milliseconds(value: str) -> None:
    assert "-t" in fails(["-t", value, "status"])


def test_a_global_option_without_value_is_an_error() -> None:
    assert fails(["status", "-e"]) == "status: -e needs a value"


def test_leaf_options_values_lists_and_flags() -> None:
    args = only(
        ["nic", "add", "--id", "a", "--ip", "1.1.1.1", "--ip", "::1", "--enable-antispoof"]
    ).args
    assert args.value("id") == "a"
    assert args.all_values("ip") == ("1.1.1.1", "::1")
    assert args.flag("enable-antispoof")
    assert not args.flag("bypass-filtering")
    assert args.value("mac") is None


def test_an_option_value_may_look_like_an_option() -> None:
    args = only(["sg", "rule", "add", "sg1", "--ip-proto", "-1", "--cidr", "::/0"]).args
    assert args.value("ip-proto") == "-1"


def test_a_single_valued_option_given_twice_is_an_error() -> None:
    assert fails(["nic", "add", "--mac", "a", "--mac", "b"]) == (
        "nic add: --mac is given more than once"
    )


def test_an_alias_counts_as_the_same_option() -> None:
    args = only(["nic", "add", "--packet-trace-path", "/p"]).args
    assert args.value("trace-path") == "/p"
    assert "given more than once" in fails(
        ["nic", "add", "--trace-path", "/a", "--packet-trace-path", "/b"]
    )


def test_a_flag_takes_no_inline_value() -> None:
    assert fails(["nic", "list", "--json=yes"]) == "nic list: --json takes no value"


def test_unknown_option_and_subcommands() -> None:
    assert fails(["nic", "list", "--bad"]) == "nic list: unknown option --bad"
    assert fails(["nic", "foo"]) == "invalid nic subcommand 'foo'"
    assert fails(["foo"]) == "invalid subcommand 'foo'"
    assert fails(["nic", "sg"]) == "nic sg: missing subcommand (list, add, del, set)"
    assert fails([]) == "missing subcommand; see 'butterfly help'"
    assert fails(["-v"]) == "missing subcommand; see 'butterfly help'"


def test_positionals_are_bound_by_name() -> None:
    args = only(["nic", "sg", "add", "vnic_1", "sg1", "sg2"]).args
    assert args.word("NIC") == "vnic_1"
    assert args.all_words("SG") == ("sg1", "sg2")


def test_missing_and_extra_positionals() -> None:
    assert fails(["nic", "stats"]) == "nic stats: missing NIC"
    assert fails(["nic", "sg", "add", "vnic_1"]) == "nic sg add: missing SG"
    assert fails(["nic", "stats", "a", "b"]) == "nic stats: unexpected argument 'b'"
    assert fails(["vni", "peer", "add", "1"]) == "vni peer add: missing PEER_IP"


def test_optional_and_empty_variadic_positionals() -> None:
    assert only(["nic", "sg", "set", "vnic_1"]).args.all_words("SG") == ()
    assert only(["sg", "rule", "del", "sg1"]).args.maybe_word("RULE_HASH") is None
    assert only(["sg", "rule", "del", "sg1", "abc"]).args.maybe_word("RULE_HASH") == "abc"


def test_member_list_and_del_need_no_extra_argument() -> None:
    assert only(["sg", "member", "list", "sg1"]).args.word("SG") == "sg1"
    args = only(["sg", "member", "del", "sg1", "10.0.0.1"]).args
    assert args.all_words("IP") == ("10.0.0.1",)


def test_double_dash_ends_options() -> None:
    args = only(["nic", "del", "--", "-odd-id"]).args
    assert args.all_words("NIC") == ("-odd-id",)


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["help"], ()),
        (["-h"], ()),
        (["nic", "help"], ("nic",)),
        (["nic", "sg", "help"], ("nic", "sg")),
        (["nic", "add", "help"], ("nic", "add")),
        (["sg", "rule", "del", "-h"], ("sg", "rule", "del")),
        (["nic", "add", "--id", "x", "--help"], ("nic", "add")),
        (["help", "sg", "member", "add"], ("sg", "member", "add")),
        (["status", "help"], ("status",)),
    ],
)
def test_help_after_any_subcommand(argv: list[str], path: tuple[str, ...]) -> None:
    command = only(argv)
    assert command.help
    assert command.path == path


def test_help_after_a_positional_is_a_name() -> None:
    command = only(["nic", "del", "a", "help"])
    assert not command.help
    assert command.args.all_words("NIC") == ("a", "help")


def test_version_wins_over_a_missing_command() -> None:
    invocation = parse(["-V"])
    assert invocation.options.version
    assert invocation.commands == ()


def test_plus_chains_commands_sharing_global_options() -> None:
    invocation = parse(
        ["-e", "tcp://h:1", "sg", "add", "web", "+", "nic", "sg", "add", "v", "web", "-t", "9"]
    )
    assert [c.path for c in invocation.commands] == [("sg", "add"), ("nic", "sg", "add")]
    assert invocation.options.endpoint == "tcp://h:1"
    assert invocation.options.timeout_ms == 9


def test_a_chain_is_parsed_whole_before_anything_runs() -> None:
    assert fails(["sg", "add", "web", "+", "nic", "bogus"]) == "invalid nic subcommand 'bogus'"


@pytest.mark.parametrize(
    "argv", [["+", "nic", "list"], ["nic", "list", "+"], ["nic", "list", "+", "+", "sg", "list"]]
)
def test_a_chain_needs_a_command_on_each_side(argv: list[str]) -> None:
    assert fails(argv) == "a command is missing around '+'"


def test_chained_global_options_must_agree() -> None:
    assert parse(["-e", "x", "nic", "list", "+", "sg", "list", "-e", "x"]).options.endpoint == "x"
    assert fails(["-e", "x", "nic", "list", "+", "sg", "list", "--endpoint", "y"]) == (
        "-e and --endpoint are given with different values"
    )


def test_parse_int_and_bool_name_the_option() -> None:
    assert parse_int("42", what="--vni", low=0, high=100) == 42
    with pytest.raises(ConfigError, match="--vni 'x' is not a number"):
        parse_int("x", what="--vni", low=0, high=100)
    with pytest.raises(ConfigError, match="--vni 101 is out of range 0-100"):
        parse_int("101", what="--vni", low=0, high=100)
    assert parse_bool("true", what="--x") is True
    assert parse_bool("false", what="--x") is False
    with pytest.raises(ConfigError, match="--x 'yes' is not true or false"):
        parse_bool("yes", what="--x")


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda spec: spec.name)
def test_every_command_has_a_help_with_its_usage(spec: CommandSpec) -> None:
    text = help_text(spec.path)
    assert text.startswith(f"usage: butterfly {spec.name} ")
    assert "global options:" in text
    assert "--endpoint, -e" in text


def test_group_help_lists_the_original_subcommands() -> None:
    text = help_text(("nic",))
    assert text.startswith("butterfly nic subcommands:\n")
    for word in ("list", "stats", "details", "sg", "add", "del", "update"):
        assert f"\n    {word} " in text
    top = help_text(())
    for word in ("nic", "sg", "status", "shutdown", "request", "dump", "vni"):
        assert f"\n    {word} " in top


ORIGINAL_NIC_ADD_OPTIONS = [
    "--ip IP",
    "--mac MAC",
    "--id ID",
    "--vni VNI",
    "--type TYPE",
    "--enable-antispoof",
    "--bypass-filtering",
    "--packet-trace BOOL",
    "--trace-path PATH",
]
ORIGINAL_RULE_OPTIONS = [
    "--dir DIRECTION",
    "--ip-proto PROTO",
    "--port PORT",
    "--port-start PORT",
    "--port-end PORT",
    "--cidr CIDR",
    "--sg-members SG",
]


def test_original_option_names_are_kept() -> None:
    for option in ORIGINAL_NIC_ADD_OPTIONS:
        assert f"\n    {option} " in help_text(("nic", "add"))
    for option in ORIGINAL_RULE_OPTIONS:
        assert f"\n    {option} " in help_text(("sg", "rule", "add"))
        assert f"\n    {option} " in help_text(("sg", "rule", "del"))
