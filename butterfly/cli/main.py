"""The entry point of the ``butterfly`` command.

It parses the whole line first (so a typo in the third chained command
sends nothing), then runs the commands in order against one daemon and
stops at the first failure. It is the only place that writes errors and
decides the exit status: 0 when every command succeeded, 1 otherwise, with
one ``butterfly: COMMAND: reason`` line on stderr.
"""

import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO

from butterfly.cli.args import help_text, parse, version_text
from butterfly.cli.commands import HANDLERS, Context
from butterfly.cli.session import DaemonApi
from butterfly.errors import ButterflyError

__all__ = ["main", "run"]

_INTERRUPTED = 130


def _error(stderr: TextIO, where: str, error: ButterflyError) -> int:
    reason = " ".join(str(error).split("\n"))
    stderr.write(f"butterfly: {where}{reason}\n")
    return 1


def run(argv: Sequence[str], *, stdout: TextIO, stderr: TextIO) -> int:
    """Run one command line; the exit status."""
    try:
        invocation = parse(argv)
    except ButterflyError as error:
        return _error(stderr, "", error)
    if invocation.options.version:
        stdout.write(version_text())
        return 0
    api = DaemonApi(
        options=invocation.options, trace=stderr if invocation.options.verbose else None
    )
    context = Context(api=api, out=stdout)
    try:
        for command in invocation.commands:
            if command.help:
                stdout.write(help_text(command.path))
                continue
            try:
                HANDLERS[command.path](command, context)
            except ButterflyError as error:
                return _error(stderr, f"{command.name}: ", error)
    except KeyboardInterrupt:
        return _INTERRUPTED
    finally:
        api.close()
    return 0


def main() -> NoReturn:
    sys.exit(run(sys.argv[1:], stdout=sys.stdout, stderr=sys.stderr))
