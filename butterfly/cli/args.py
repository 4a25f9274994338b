"""The grammar of the ``butterfly`` command: what words and options it takes.

The original C++ client reads its arguments in a way argparse cannot mimic:
global options anywhere on the line, the word ``help`` after any command,
and (our addition) ``+`` to chain several commands in one call. So this
module holds a small declarative table of commands and a parser that turns
an argv into an :class:`Invocation`, or raises ConfigError with a one-line
message naming the command and the option at fault. It also renders the
help texts from the same table, so usage and parser never disagree.

It does no I/O; of the rest of butterfly it needs only the default endpoint
and ConfigError, and it must not import the store, the service or the daemon.
"""

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from butterfly import __version__
from butterfly.api.client import DEFAULT_ENDPOINT
from butterfly.errors import ConfigError

__all__ = [
    "CHAIN",
    "COMMANDS",
    "DEFAULT_TIMEOUT_MS",
    "Args",
    "Arity",
    "Command",
    "CommandSpec",
    "GlobalOptions",
    "Invocation",
    "Kind",
    "Option",
    "Positional",
    "help_text",
    "parse",
    "parse_bool",
    "parse_int",
    "version_text",
]

CHAIN = "+"
"""The word that separates chained commands."""

DEFAULT_TIMEOUT_MS = 5_000


class Kind(enum.Enum):
    FLAG = "flag"
    VALUE = "value"
    """Takes one value and may be given once."""
    LIST = "list"
    """Takes one value and may be repeated."""


class Arity(enum.Enum):
    ONE = "one"
    OPTIONAL = "optional"
    MANY = "many"
    """One or more; only the last positional may be variadic."""
    ANY = "any"
    """Zero or more; only the last positional may be variadic."""


@dataclass(frozen=True, kw_only=True)
class Option:
    names: tuple[str, ...]
    help: str
    kind: Kind = Kind.VALUE
    metavar: str = ""

    @property
    def key(self) -> str:
        """The name handlers ask for: the first long name without dashes."""
        return self.names[0].lstrip("-")

    @property
    def label(self) -> str:
        return "/".join(self.names)


@dataclass(frozen=True, kw_only=True)
class Positional:
    name: str
    arity: Arity = Arity.ONE


@dataclass(frozen=True, kw_only=True)
class CommandSpec:
    path: tuple[str, ...]
    summary: str
    """One line, shown in the listing of the parent group."""
    description: str = ""
    positionals: tuple[Positional, ...] = ()
    options: tuple[Option, ...] = ()
    notes: str = ""
    """Free text shown after the options in the help."""

    @property
    def name(self) -> str:
        return " ".join(self.path)

    def option(self, token: str) -> Option | None:
        return next((o for o in self.options if token in o.names), None)


@dataclass(frozen=True, kw_only=True)
class GlobalOptions:
    endpoint: str = DEFAULT_ENDPOINT
    key_path: str | None = None
    curve_server_key: str | None = None
    """The daemon's public CurveZMQ key file: talk CurveZMQ (with ``curve_key``)."""
    curve_key: str | None = None
    """Our CurveZMQ key pair (a ``.key_secret`` file)."""
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    verbose: bool = False
    version: bool = False


@dataclass(frozen=True, kw_only=True)
class Args:
    """The values one command was given, by positional name and option key."""

    words: dict[str, tuple[str, ...]] = field(default_factory=dict)
    values: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def word(self, name: str) -> str:
        return self.words[name][0]

    def maybe_word(self, name: str) -> str | None:
        given = self.words.get(name, ())
        return given[0] if given else None

    def all_words(self, name: str) -> tuple[str, ...]:
        return self.words.get(name, ())

    def value(self, key: str) -> str | None:
        given = self.values.get(key, ())
        return given[-1] if given else None

    def all_values(self, key: str) -> tuple[str, ...]:
        return self.values.get(key, ())

    def flag(self, key: str) -> bool:
        return key in self.values


@dataclass(frozen=True, kw_only=True)
class Command:
    """One command of the line: a call, or a request for its help text."""

    path: tuple[str, ...]
    args: Args = field(default_factory=Args)
    help: bool = False

    @property
    def name(self) -> str:
        return " ".join(self.path)


@dataclass(frozen=True, kw_only=True)
class Invocation:
    options: GlobalOptions
    commands: tuple[Command, ...]


def _opt(*names: str, help: str, kind: Kind = Kind.VALUE, metavar: str = "") -> Option:
    return Option(names=names, help=help, kind=kind, metavar=metavar)


def _one(name: str) -> Positional:
    return Positional(name=name)


def _many(name: str) -> Positional:
    return Positional(name=name, arity=Arity.MANY)


_JSON = _opt("--json", kind=Kind.FLAG, help="print the result as JSON, for scripts")

_RULE_OPTIONS = (
    _opt("--dir", metavar="DIRECTION", help="rule direction (default: in)"),
    _opt("--ip-proto", metavar="PROTO", help="IP protocol to allow (mandatory)"),
    _opt("--port", metavar="PORT", help="open a single port"),
    _opt("--port-start", metavar="PORT", help="port range start"),
    _opt("--port-end", metavar="PORT", help="port range end"),
    _opt("--cidr", metavar="CIDR", help="address mask to allow in CIDR format"),
    _opt("--sg-members", metavar="SG", help="security group members to allow"),
)

_RULE_NOTES = """\
DIRECTION:

'in' (inbound: what the vnic receives) or 'out' (outbound: what it sends)

PROTO:

Must be 'tcp', 'udp', 'icmp', a number between 0 and 255 or 'all' to allow all protocols

PORT:

if you set udp or tcp in protocol, you must set a port (or a range) between 0 and 65535

Notes: you MUST set either --cidr or --sg-members"""

_TRACE_OPTIONS = (
    _opt(
        "--packet-trace",
        metavar="BOOL",
        help="true/false  trace a nic or not (default: use server behaviour)",
    ),
    _opt(
        "--trace-path",
        "--packet-trace-path",
        metavar="PATH",
        help="where to store the pcap file when --packet-trace is true",
    ),
)

_LIMIT_OPTIONS = (
    _opt(
        "--max-connections",
        metavar="N",
        help="connections the nic may have started at once (0: no cap; default: the server's)",
    ),
    _opt(
        "--max-new-connections",
        metavar="N",
        help="connections the nic may start per second (0: no cap; default: the server's)",
    ),
)

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(
        path=("nic", "list"),
        summary="list all nics id",
        description="Show all created nics in butterfly",
        options=(_JSON,),
    ),
    CommandSpec(
        path=("nic", "stats"),
        summary="show nic statistics",
        description="Show some statistics of a vnic (in bytes)",
        positionals=(_one("NIC"),),
        options=(_JSON,),
    ),
    CommandSpec(
        path=("nic", "details"),
        summary="prints nics's details",
        description="Show vnic details",
        positionals=(_one("NIC"),),
        options=(_JSON,),
    ),
    CommandSpec(
        path=("nic", "add"),
        summary="create a new nic",
        description="Create a vnic (an existing vnic with the same id is replaced)",
        options=(
            _opt(
                "--ip",
                kind=Kind.LIST,
                metavar="IP",
                help="virtual interface's ip (v4 or v6), repeatable",
            ),
            _opt("--mac", metavar="MAC", help="virtual interface's mac (mandatory)"),
            _opt("--id", metavar="ID", help="interface's id (mandatory)"),
            _opt(
                "--type",
                metavar="TYPE",
                help="nic type: vhost-user, tap or netns (default: vhost-user)",
            ),
            _opt("--path", metavar="NETNS", help="the network namespace of a netns nic"),
            _opt("--vni", metavar="VNI", help="virtual network id < 2^24 (mandatory)"),
            _opt("--sg", kind=Kind.LIST, metavar="SG", help="security group to apply, repeatable"),
            _opt(
                "--enable-antispoof",
                kind=Kind.FLAG,
                help="enable antispoof protection (default: off)",
            ),
            *_TRACE_OPTIONS,
            *_LIMIT_OPTIONS,
            _opt(
                "--bypass-filtering",
                kind=Kind.FLAG,
                help="remove all filters and protection",
            ),
        ),
    ),
    CommandSpec(
        path=("nic", "update"),
        summary="update a nic",
        description="Change the ips, antispoof, tracing or connection caps of a vnic",
        options=(
            _opt(
                "--ip",
                kind=Kind.LIST,
                metavar="IP",
                help="virtual interface's ip (v4 or v6), replaces all; '' removes all",
            ),
            _opt("--id", metavar="ID", help="interface's id (mandatory)"),
            _opt("--enable-antispoof", metavar="BOOL", help="true/false  enable antispoof"),
            *_TRACE_OPTIONS,
            *_LIMIT_OPTIONS,
        ),
    ),
    CommandSpec(
        path=("nic", "export"),
        summary="save a nic's firewall sessions to a file",
        description=(
            "Write the firewall sessions (conntrack entries) of a vnic to FILE, before a\n"
            "live migration; 'nic import' loads them on the destination host"
        ),
        positionals=(_one("NIC"), _one("FILE")),
    ),
    CommandSpec(
        path=("nic", "import"),
        summary="load a nic's firewall sessions from a file",
        description=(
            "Load the firewall sessions that 'nic export' wrote to FILE into the vnic of\n"
            "this host (same id and VNI), after 'nic add' and before the VM resumes"
        ),
        positionals=(_one("NIC"), _one("FILE")),
    ),
    CommandSpec(
        path=("nic", "del"),
        summary="remove nic(s)",
        description="Destroy one or more vnic",
        positionals=(_many("NIC"),),
    ),
    CommandSpec(
        path=("nic", "sg", "list"),
        summary="list security groups attached to a nic",
        description="List security groups applied to a vnic",
        positionals=(_one("NIC"),),
        options=(_JSON,),
    ),
    CommandSpec(
        path=("nic", "sg", "add"),
        summary="add one or more security group to a nic",
        description="Add a security group to a vnic",
        positionals=(_one("NIC"), _many("SG")),
    ),
    CommandSpec(
        path=("nic", "sg", "del"),
        summary="removes one or more security group of a nic",
        description="Remove a security group from a vnic",
        positionals=(_one("NIC"), _many("SG")),
    ),
    CommandSpec(
        path=("nic", "sg", "set"),
        summary="update all security groups of a nic",
        description="Overwrite security group listing of a vnic (no SG removes them all)",
        positionals=(_one("NIC"), Positional(name="SG", arity=Arity.ANY)),
    ),
    CommandSpec(
        path=("sg", "list"),
        summary="list security groups",
        description="List all available security groups",
        options=(_JSON,),
    ),
    CommandSpec(
        path=("sg", "add"),
        summary="create one or more security groups",
        description=(
            "Create a new security group\n"
            "Note that creating a new security group when it already\n"
            "exists will overwrite the existing SG with an empty one."
        ),
        positionals=(_many("SG"),),
    ),
    CommandSpec(
        path=("sg", "del"),
        summary="remove one or more security groups",
        description="Delete one or more security group",
        positionals=(_many("SG"),),
    ),
    CommandSpec(
        path=("sg", "rule", "list"),
        summary="list security group rules",
        description="List all firewalling rules of a security group",
        positionals=(_one("SG"),),
        options=(_JSON,),
    ),
    CommandSpec(
        path=("sg", "rule", "add"),
        summary="create a new rule",
        description="Add a new firewalling rule inside a security group",
        positionals=(_one("SG"),),
        options=_RULE_OPTIONS,
        notes=_RULE_NOTES,
    ),
    CommandSpec(
        path=("sg", "rule", "del"),
        summary="remove rule",
        description=(
            "Remove a firewalling rule from a security group, named by its\n"
            "RULE_HASH (see sg rule list) or by the options that added it"
        ),
        positionals=(_one("SG"), Positional(name="RULE_HASH", arity=Arity.OPTIONAL)),
        options=_RULE_OPTIONS,
        notes=_RULE_NOTES,
    ),
    CommandSpec(
        path=("sg", "member", "list"),
        summary="list members of a security group",
        description="List members of a security group",
        positionals=(_one("SG"),),
        options=(_JSON,),
    ),
    CommandSpec(
        path=("sg", "member", "add"),
        summary="add member to a security group",
        description="Add members (IP) to a security group",
        positionals=(_one("SG"), _many("IP")),
    ),
    CommandSpec(
        path=("sg", "member", "del"),
        summary="remove member of a security group",
        description="Remove members (IP) from a security group",
        positionals=(_one("SG"), _many("IP")),
    ),
    CommandSpec(
        path=("vni", "peer", "list"),
        summary="list static VXLAN peers",
        description="List the static VXLAN peers of every VNI",
        options=(_JSON,),
    ),
    CommandSpec(
        path=("vni", "peer", "add"),
        summary="add a static VXLAN peer to a VNI",
        description="Flood the VNI's broadcast and unknown traffic to PEER_IP too",
        positionals=(_one("VNI"), _one("PEER_IP")),
    ),
    CommandSpec(
        path=("vni", "peer", "del"),
        summary="remove a static VXLAN peer of a VNI",
        description="Stop flooding the VNI's traffic to PEER_IP",
        positionals=(_one("VNI"), _one("PEER_IP")),
    ),
    CommandSpec(
        path=("status",),
        summary="show informations about butterfly",
        description="Show butterfly status informations",
        options=(
            _opt(
                "--svg",
                metavar="FILE",
                help="also render the dot graph to FILE (needs Graphviz's dot)",
            ),
            _JSON,
        ),
    ),
    CommandSpec(
        path=("shutdown",),
        summary="ask butterflyd to stop",
        description="Ask butterfly to quit",
    ),
    CommandSpec(
        path=("request",),
        summary="send a protobuf request to butterfly",
        description="Send the text-format proto.Messages of REQUEST_FILE as one request",
        positionals=(_one("REQUEST_FILE"),),
        options=(_opt("--stdout", kind=Kind.FLAG, help="prints protobuf response to stdout"),),
    ),
    CommandSpec(
        path=("curve", "keygen"),
        summary="make a CurveZMQ key pair",
        description=(
            "Write DIR/NAME.key (the public key: give it to the other side) and\n"
            "DIR/NAME.key_secret (keep it: --curve-key, or the daemon's\n"
            "curve_secret_key_path). A daemon lets in the clients whose .key files\n"
            "are in its curve_allowed_clients_dir. Needs no daemon."
        ),
        positionals=(_one("DIR"), _one("NAME")),
    ),
    CommandSpec(
        path=("dump",),
        summary="extract Butterfly configuration",
        description=(
            "Dump all butterfly configuration (security groups, nics and vni peers)\n"
            "to stdout. The generated data contains all requests ready to send to\n"
            "an other Butterfly\n"
            "Example:\n"
            "- butterfly dump > butterfly.dump\n"
            "- butterfly shutdown\n"
            "- start butterfly again\n"
            "- butterfly request butterfly.dump"
        ),
    ),
)

_GROUPS: dict[tuple[str, ...], str] = {
    ("nic",): "manage virtual interfaces",
    ("nic", "sg"): "manage security groups attached to a nic",
    ("sg",): "manage security groups",
    ("sg", "rule"): "manage security group rules",
    ("sg", "member"): "manage security group members",
    ("vni",): "manage VXLAN networks",
    ("vni", "peer"): "manage static VXLAN peers (for underlays without multicast)",
    ("curve",): "manage CurveZMQ keys (an authenticated API)",
}

_SPECS = {spec.path: spec for spec in COMMANDS}


def _children(path: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (word, summary) of each command or group right under ``path``."""
    found: dict[str, str] = {}
    depth = len(path)
    for spec in COMMANDS:
        if len(spec.path) > depth and spec.path[:depth] == path:
            child = spec.path[: depth + 1]
            found.setdefault(child[-1], spec.summary if child == spec.path else _GROUPS[child])
    return list(found.items())


_GLOBAL_VALUE = {
    "-e": "endpoint",
    "--endpoint": "endpoint",
    "-k": "key_path",
    "--key": "key_path",
    "--curve-server-key": "curve_server_key",
    "--curve-key": "curve_key",
    "-t": "timeout_ms",
    "--timeout": "timeout_ms",
}
_GLOBAL_FLAG = {
    "-v": "verbose",
    "--verbose": "verbose",
    "-V": "version",
    "--version": "version",
}
_HELP = ("-h", "--help")
_MAX_TIMEOUT_MS = 24 * 3600 * 1000


def parse_int(text: str, *, what: str, low: int, high: int) -> int:
    """An integer option value in [low, high], or ConfigError naming ``what``."""
    try:
        number = int(text, 10)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a number") from None
    if not low <= number <= high:
        raise ConfigError(f"{what} {number} is out of range {low}-{high}")
    return number


def parse_bool(text: str, *, what: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise ConfigError(f"{what} {text!r} is not true or false")


class _Globals:
    """The global options seen so far across all chained commands.

    Chained commands share one daemon, so the same option given twice must
    say the same thing.
    """

    def __init__(self) -> None:
        self._given: dict[str, tuple[str, str]] = {}

    def set(self, attribute: str, token: str, value: str) -> None:
        previous = self._given.get(attribute)
        if previous is not None and previous[1] != value:
            raise ConfigError(f"{previous[0]} and {token} are given with different values")
        self._given[attribute] = (token, value)

    def _value(self, attribute: str) -> str | None:
        given = self._given.get(attribute)
        return None if given is None else given[1]

    def build(self) -> GlobalOptions:
        timeout = self._given.get("timeout_ms")
        endpoint = self._value("endpoint")
        curve_server_key, curve_key = self._value("curve_server_key"), self._value("curve_key")
        if (curve_server_key is None) != (curve_key is None):
            raise ConfigError("--curve-server-key and --curve-key go together")
        return GlobalOptions(
            endpoint=DEFAULT_ENDPOINT if endpoint is None else endpoint,
            key_path=self._value("key_path"),
            curve_server_key=curve_server_key,
            curve_key=curve_key,
            timeout_ms=(
                DEFAULT_TIMEOUT_MS
                if timeout is None
                else parse_int(timeout[1], what=timeout[0], low=1, high=_MAX_TIMEOUT_MS)
            ),
            verbose="verbose" in self._given,
            version="version" in self._given,
        )


def _split_long(token: str) -> tuple[str, str | None]:
    """``--name=value`` as (``--name``, ``value``); other tokens unchanged."""
    if token.startswith("--") and "=" in token:
        name, value = token.split("=", 1)
        return name, value
    return token, None


class _SegmentParser:
    """Parses the words of one command (between two ``+``)."""

    def __init__(self, tokens: Sequence[str], globals_: _Globals) -> None:
        self._tokens = list(tokens)
        self._index = 0
        self._globals = globals_
        self._path: tuple[str, ...] = ()
        self._spec: CommandSpec | None = None
        self._help = False
        self._words: list[str] = []
        self._values: dict[str, list[str]] = {}
        self._only_words = False

    def _where(self) -> str:
        return " ".join(self._path) or "butterfly"

    def _take_value(self, token: str, inline: str | None) -> str:
        if inline is not None:
            return inline
        self._index += 1
        if self._index >= len(self._tokens):
            raise ConfigError(f"{self._where()}: {token} needs a value")
        return self._tokens[self._index]

    def _global(self, token: str, inline: str | None) -> bool:
        if token in _GLOBAL_VALUE:
            self._globals.set(_GLOBAL_VALUE[token], token, self._take_value(token, inline))
            return True
        if token in _GLOBAL_FLAG and inline is None:
            self._globals.set(_GLOBAL_FLAG[token], token, "")
            return True
        if token in _HELP and inline is None:
            self._help = True
            return True
        return False

    def _option(self, token: str, inline: str | None) -> bool:
        """Take ``token`` as an option of the command, if it is one."""
        spec = self._spec
        option = None if spec is None else spec.option(token)
        if spec is None or option is None:
            return False
        if option.kind is Kind.FLAG:
            if inline is not None:
                raise ConfigError(f"{spec.name}: {token} takes no value")
            value = ""
        else:
            value = self._take_value(token, inline)
        values = self._values.setdefault(option.key, [])
        if values and option.kind is not Kind.LIST:
            raise ConfigError(f"{spec.name}: {option.label} is given more than once")
        values.append(value)
        return True

    def _word(self, token: str) -> None:
        spec = self._spec
        if spec is not None:
            if token == "help" and not self._words and not self._values:
                self._help = True
            else:
                self._words.append(token)
            return
        if token == "help" and not self._help:
            self._help = True
            return
        child = (*self._path, token)
        if child in _SPECS:
            self._spec = _SPECS[child]
        elif child not in _GROUPS:
            if self._path:
                raise ConfigError(f"invalid {self._where()} subcommand {token!r}")
            raise ConfigError(f"invalid subcommand {token!r}")
        self._path = child

    def parse(self) -> Command | None:
        """The command, or None when the words name none (only global options)."""
        while self._index < len(self._tokens):
            raw = self._tokens[self._index]
            token, inline = _split_long(raw)
            if self._only_words or not raw.startswith("-") or raw == "-":
                self._word(raw)
            elif raw == "--":
                self._only_words = True
            elif not self._option(token, inline) and not self._global(token, inline):
                raise ConfigError(f"{self._where()}: unknown option {token}")
            self._index += 1
        if self._help:
            return Command(path=self._path, help=True)
        if self._spec is None:
            if not self._path:
                return None
            choices = ", ".join(word for word, _ in _children(self._path))
            raise ConfigError(f"{self._where()}: missing subcommand ({choices})")
        words = _bind(self._spec, self._words)
        values = {key: tuple(given) for key, given in self._values.items()}
        return Command(path=self._path, args=Args(words=words, values=values))


def _bind(spec: CommandSpec, words: list[str]) -> dict[str, tuple[str, ...]]:
    """Distribute the positional words over the command's positionals, left to right."""
    bound: dict[str, tuple[str, ...]] = {}
    rest = list(words)
    for position, positional in enumerate(spec.positionals):
        required = positional.arity in (Arity.ONE, Arity.MANY)
        if required and not rest:
            raise ConfigError(f"{spec.name}: missing {positional.name}")
        later = sum(
            1 for p in spec.positionals[position + 1 :] if p.arity in (Arity.ONE, Arity.MANY)
        )
        spare = max(len(rest) - later, 0)
        if positional.arity is Arity.ONE:
            taken = 1
        elif positional.arity is Arity.OPTIONAL:
            taken = min(spare, 1)
        else:
            taken = max(spare, 1 if required else 0)
        bound[positional.name] = tuple(rest[:taken])
        rest = rest[taken:]
    if rest:
        raise ConfigError(f"{spec.name}: unexpected argument {rest[0]!r}")
    return bound


def parse(argv: Sequence[str]) -> Invocation:
    """The invocation an argv asks for; ConfigError when it does not parse."""
    segments: list[list[str]] = [[]]
    for token in argv:
        if token == CHAIN:
            segments.append([])
        else:
            segments[-1].append(token)
    globals_ = _Globals()
    parsed = [_SegmentParser(segment, globals_).parse() for segment in segments]
    options = globals_.build()
    if options.version:
        return Invocation(options=options, commands=())
    commands = [command for command in parsed if command is not None]
    if len(commands) < len(parsed):
        if len(parsed) > 1:
            raise ConfigError(f"a command is missing around '{CHAIN}'")
        raise ConfigError("missing subcommand; see 'butterfly help'")
    return Invocation(options=options, commands=tuple(commands))


def _usage(spec: CommandSpec) -> str:
    parts = ["usage: butterfly", spec.name]
    for positional in spec.positionals:
        name = positional.name
        parts.append(
            {
                Arity.ONE: name,
                Arity.OPTIONAL: f"[{name}]",
                Arity.MANY: f"{name} [{name}...]",
                Arity.ANY: f"[{name}...]",
            }[positional.arity]
        )
    parts.append("[options...]")
    return " ".join(parts)


def _table(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(left) for left, _ in rows) + 2
    return [f"    {left.ljust(width)}{right}".rstrip() for left, right in rows]


def _global_help() -> list[str]:
    return [
        "",
        "global options:",
        *_table(
            [
                ("--endpoint, -e", f"endpoint to use (default: {DEFAULT_ENDPOINT})"),
                ("--key, -k", "path to the encryption key (32 bytes in base64)"),
                ("--curve-server-key", "the daemon's CurveZMQ public key (.key file)"),
                ("--curve-key", "our CurveZMQ key pair (.key_secret file)"),
                (
                    "--timeout, -t",
                    f"milliseconds to wait for each answer (default: {DEFAULT_TIMEOUT_MS})",
                ),
                ("--verbose, -v", "show details of each operation (on stderr)"),
            ]
        ),
    ]


def help_text(path: tuple[str, ...]) -> str:
    """The help of a command or of a group of commands."""
    spec = _SPECS.get(path)
    if spec is None:
        lines = []
        if not path:
            lines += ["usage: butterfly [subcommands] [options...] [+ subcommands...]", ""]
        lines.append(" ".join(("butterfly", *path, "subcommands:")))
        lines += _table(_children(path))
        if not path:
            lines += [
                "",
                "options:",
                *_table(
                    [
                        ("--version, -V", "show butterfly version"),
                        ("--help, -h", "show this help"),
                    ]
                ),
                "",
                f"Chain commands with '{CHAIN}' (stops at the first failure):",
                "    butterfly sg add web + sg rule add web --ip-proto tcp --port 80 "
                "--cidr 0.0.0.0/0",
            ]
        return "\n".join([*lines, *_global_help()]) + "\n"
    lines = [_usage(spec), "", spec.description]
    if spec.options:
        rows = [
            (
                f"{o.names[0]} {o.metavar}".rstrip(),
                o.help + "".join(f" (or {alias})" for alias in o.names[1:]),
            )
            for o in spec.options
        ]
        lines += ["", "options:", *_table(rows)]
    if spec.notes:
        lines += ["", spec.notes]
    return "\n".join([*lines, *_global_help()]) + "\n"


def version_text() -> str:
    return f"butterfly {__version__}\n"
