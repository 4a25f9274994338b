"""Structured logs in the journal's native protocol, read by a real datagram listener.

The listener parses what journald parses: ``NAME=value`` lines, binary-safe
``NAME\\n<le64 length><value>\\n`` fields, and entries too large for a
datagram, which arrive as a sealed memfd passed with SCM_RIGHTS.
"""

import array
import logging
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.daemon.journal import JournalHandler, RequestFields
from butterfly.daemon.observe import ObservedAnswer


def parse_entry(data: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            data = rest
        else:
            name = line
            (size,) = struct.unpack("<Q", rest[:8])
            value, data = rest[8 : 8 + size], rest[8 + size + 1 :]
            assert rest[8 + size : 9 + size] == b"\n"
        fields[name.decode()] = value.decode()
    return fields


class Journal:
    """A stand-in for /run/systemd/journal/socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(path)
        self._socket.settimeout(2)

    def entry(self) -> dict[str, str]:
        fds = array.array("i")
        data, ancillary, _, _ = self._socket.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, payload in ancillary:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.frombytes(payload)
        if fds:
            assert data == b""
            with os.fdopen(fds[0], "rb") as memfd:
                memfd.seek(0)  # journald maps it: the offset is the sender's
                data = memfd.read()
        return parse_entry(data)

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    made = Journal(str(tmp_path / "journal.socket"))
    yield made
    made.close()


@pytest.fixture
def logger(journal: Journal) -> Iterator[logging.Logger]:
    handler = JournalHandler(journal.path)
    handler.addFilter(RequestFields())
    made = logging.getLogger("butterfly.test_journal")
    made.handlers[:] = [handler]
    made.propagate = False
    made.setLevel(logging.DEBUG)
    yield made
    made.handlers.clear()
    handler.close()


def test_a_record_becomes_one_entry_with_priority_and_code_location(
    journal: Journal, logger: logging.Logger
) -> None:
    logger.warning("vnic %s: %d frames", "vnic_1", 3)
    entry = journal.entry()
    assert entry["MESSAGE"] == "vnic vnic_1: 3 frames"
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "butterflyd"
    assert entry["LOGGER"] == "butterfly.test_journal"
    assert entry["CODE_FILE"] == __file__
    assert entry["CODE_FUNC"] == "test_a_record_becomes_one_entry_with_priority_and_code_location"
    logger.debug("quiet")
    assert journal.entry()["PRIORITY"] == "7"


def test_multi_line_messages_and_tracebacks_use_the_binary_field_form(
    journal: Journal, logger: logging.Logger
) -> None:
    try:
        raise ValueError("broken\nin two lines")
    except ValueError:
        logger.exception("while answering")
    entry = journal.entry()
    assert entry["PRIORITY"] == "3"
    assert entry["MESSAGE"].startswith("while answering\nTraceback")
    assert entry["MESSAGE"].endswith("ValueError: broken\nin two lines")


def test_an_entry_larger_than_a_datagram_goes_through_a_memfd(
    journal: Journal, logger: logging.Logger
) -> None:
    big = "x" * 4_000_000  # far above the socket's largest datagram
    logger.info("%s", big)
    assert journal.entry()["MESSAGE"] == big


def test_what_a_request_is_about_goes_with_every_record_logged_while_answering(
    journal: Journal, logger: logging.Logger
) -> None:
    def answer(message: MessageV0) -> MessageV0:
        logger.info("handling")
        reply = MessageV0()
        reply.response.status.status = False
        return reply

    seen: list[tuple[str, bool, float]] = []
    observed = ObservedAnswer(answer, lambda *args: seen.append(args))
    message = MessageV0(message_id="req-42")
    message.request.nic_add.id = "vnic_7"
    message.request.nic_add.vni = 1337
    message.request.nic_add.mac = "52:54:00:00:00:07"
    observed(message)
    entry = journal.entry()
    assert (entry["VNIC"], entry["VNI"], entry["REQUEST_ID"], entry["REQUEST"]) == (
        "vnic_7",
        "1337",
        "req-42",
        "nic_add",
    )
    assert seen[0][:2] == ("nic_add", False)
    logger.info("after the request")
    assert "VNIC" not in journal.entry()
    observed(MessageV0(request=MessageV0.Request(sg_member_add={"sg_id": "sg-web", "member": "1"})))
    assert journal.entry()["SG"] == "sg-web"


def test_journal_stream_counts_only_when_it_names_our_stderr(tmp_path: Path) -> None:
    probe = "from butterfly.daemon.journal import stderr_is_journal; print(stderr_is_journal())"
    with open(tmp_path / "stderr", "wb") as stderr:
        stat = os.fstat(stderr.fileno())
        for stream, expected in ((f"{stat.st_dev}:{stat.st_ino}", "True"), ("1:2", "False")):
            done = subprocess.run(
                [sys.executable, "-c", probe],
                env={**os.environ, "JOURNAL_STREAM": stream},
                stderr=stderr,
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            assert done.stdout.strip() == expected
