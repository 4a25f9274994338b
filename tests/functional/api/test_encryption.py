"""Encryption end to end: a keyed daemon, keyed and unkeyed clients, bad key files.

The interoperability test builds and opens frames with ``cryptography``
directly, following shared/protocol.md, so it does not trust our own codec.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

import pytest
from api_helpers import dump, frame, nic, ok, request, write_key
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from butterfly.api.client import Client
from butterfly.api.crypto import seal
from butterfly.api.proto.encrypted_pb2 import Encrypted
from butterfly.api.proto.message_pb2 import Error, Messages
from butterfly.errors import ClientError

if TYPE_CHECKING:
    from conftest import Daemon, DaemonFactory


@pytest.fixture
def keyed(daemon_factory: DaemonFactory, key_file: tuple[str, bytes]) -> tuple[Daemon, bytes]:
    path, key = key_file
    daemon = daemon_factory(key_path=path)
    daemon.start()
    return daemon, key


def _raw(client: Client, data: bytes) -> Messages:
    reply = Messages()
    reply.ParseFromString(client.send_frame(data))
    return reply


def _clear_rejection(reply: Messages) -> bool:
    """The deployed daemon's refusal: one clear Message { revision error { REJECTED } }."""
    assert not reply.HasField("encrypted"), reply
    assert len(reply.messages) == 1, reply
    message = reply.messages[0]
    assert message.revision == 6 and not message.HasField("message_0"), reply
    return message.error.code == Error.REJECTED


def _encrypted_error(reply: Messages) -> int:
    assert not reply.messages, reply
    assert reply.HasField("encrypted") and reply.encrypted.HasField("error"), reply
    assert not reply.encrypted.HasField("aes256cbc_sha512")
    return reply.encrypted.error.code


def test_keyed_client_and_keyed_daemon_work(keyed: tuple[Daemon, bytes]) -> None:
    daemon, key = keyed
    client = daemon.client(key=key)
    response = ok(client, nic_add=nic("secret", ips=("10.0.0.1",)))
    assert response.nic_add.path.endswith("qemu-vhost-secret")
    assert list(ok(client, nic_list=True).nic_list) == ["secret"]
    answer = client.call(request(nic_details="secret"), message_id="m1")
    assert answer.message_id == "m1"
    assert list(answer.response.nic_details[0].ip) == ["10.0.0.1"]


def test_the_reply_is_encrypted(keyed: tuple[Daemon, bytes]) -> None:
    daemon, key = keyed
    client = daemon.client(key=key)
    data = Messages()
    data.encrypted.aes256cbc_sha512 = seal(frame(request(nic_list=True)).SerializeToString(), key)
    reply = _raw(client, data.SerializeToString())
    assert not reply.messages
    assert reply.encrypted.HasField("aes256cbc_sha512")
    assert not reply.encrypted.HasField("error")


def _deployed_seal(content: bytes, key: bytes, iv: bytes) -> bytes:
    """The deployed client's transform, written from the specification."""
    pad = 16 - (64 + len(content)) % 16
    plain = hashlib.sha512(content).digest() + content + bytes([pad]) * pad
    backwards = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return iv + backwards.update(plain) + backwards.finalize()


def _deployed_unseal(blob: bytes, key: bytes) -> bytes:
    forwards = Cipher(algorithms.AES(key), modes.CBC(blob[:16])).encryptor()
    plain = forwards.update(blob[16:]) + forwards.finalize()
    pad = plain[-1]
    content = plain[64:-pad]
    assert plain[:64] == hashlib.sha512(content).digest()
    assert plain[-pad:] == bytes([pad]) * pad
    return content


def test_interoperates_with_the_deployed_transform(keyed: tuple[Daemon, bytes]) -> None:
    daemon, key = keyed
    client = daemon.client()
    for size in range(3):  # different paddings, a full block among them
        content = frame(
            request(nic_add=nic("n" * (size + 1), mac=f"52:54:00:00:00:1{size}")),
            message_ids=["x" * size],
        ).SerializeToString()
        data = Messages()
        data.encrypted.aes256cbc_sha512 = _deployed_seal(content, key, os.urandom(16))
        reply = _raw(client, data.SerializeToString())
        inner = Messages()
        inner.ParseFromString(_deployed_unseal(reply.encrypted.aes256cbc_sha512, key))
        assert inner.messages[0].message_0.response.status.status
        assert inner.messages[0].message_0.message_id == "x" * size


def test_clear_client_is_rejected(keyed: tuple[Daemon, bytes]) -> None:
    daemon, key = keyed
    ok(daemon.client(key=key), nic_add=nic("kept"))
    before = dump(daemon.client(key=key))
    clear = daemon.client()
    reply = _raw(clear, frame(request(nic_del="kept")).SerializeToString())
    assert _clear_rejection(reply)
    assert _clear_rejection(_raw(clear, b""))
    with pytest.raises(ClientError, match="REJECTED"):
        clear.call(request(nic_del="kept"))
    assert dump(daemon.client(key=key)) == before


def test_wrong_key_is_rejected(keyed: tuple[Daemon, bytes]) -> None:
    daemon, key = keyed
    wrong = bytes(b ^ 1 for b in key)
    ok(daemon.client(key=key), nic_add=nic("kept"))
    before = dump(daemon.client(key=key))
    with pytest.raises(ClientError, match="REJECTED"):
        daemon.client(key=wrong).call(request(nic_del="kept"))
    assert dump(daemon.client(key=key)) == before


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x00" * 95,  # shorter than IV + digest + one block
        b"\x00" * 97,  # not whole blocks
        b"\x00" * 96,  # whole blocks, garbage: bad padding or digest
    ],
    ids=["empty", "short", "ragged", "garbage"],
)
def test_malformed_blobs_are_rejected(keyed: tuple[Daemon, bytes], blob: bytes) -> None:
    daemon, _ = keyed
    data = Messages()
    data.encrypted.aes256cbc_sha512 = blob
    assert (
        _encrypted_error(_raw(daemon.client(), data.SerializeToString()))
        == Encrypted.Error.REJECTED
    )


def test_tampered_blob_is_rejected(keyed: tuple[Daemon, bytes]) -> None:
    daemon, key = keyed
    blob = bytearray(seal(frame(request(nic_add=nic("x"))).SerializeToString(), key))
    blob[40] ^= 0x01
    data = Messages()
    data.encrypted.aes256cbc_sha512 = bytes(blob)
    assert (
        _encrypted_error(_raw(daemon.client(), data.SerializeToString()))
        == Encrypted.Error.REJECTED
    )
    assert list(ok(daemon.client(key=key), nic_list=True).nic_list) == []


def test_encrypted_without_blob_is_not_supported(keyed: tuple[Daemon, bytes]) -> None:
    daemon, _ = keyed
    data = Messages()
    data.encrypted.SetInParent()
    assert (
        _encrypted_error(_raw(daemon.client(), data.SerializeToString()))
        == Encrypted.Error.NOT_SUPPORTED
    )


def test_encrypted_garbage_inside_gets_an_encrypted_parse_error(
    keyed: tuple[Daemon, bytes],
) -> None:
    daemon, key = keyed
    data = Messages()
    data.encrypted.aes256cbc_sha512 = seal(b"\xff\xff\xff", key)
    reply = _raw(daemon.client(), data.SerializeToString())
    inner = Messages()
    inner.ParseFromString(_deployed_unseal(reply.encrypted.aes256cbc_sha512, key))
    assert inner.messages[0].error.code == Error.PARSE_ERROR


def test_keyed_client_to_unkeyed_daemon_is_rejected_in_clear(daemon: Daemon) -> None:
    keyed_client = daemon.client(key=os.urandom(32))
    with pytest.raises(ClientError, match=r"REJECTED \(the daemon has no key"):
        keyed_client.call(request(nic_list=True))
    data = Messages()
    data.encrypted.aes256cbc_sha512 = seal(b"", os.urandom(32))
    assert _clear_rejection(_raw(daemon.client(), data.SerializeToString()))
    data.encrypted.Clear()
    data.encrypted.SetInParent()
    assert _clear_rejection(_raw(daemon.client(), data.SerializeToString()))
    ok(daemon.client(), nic_list=True)


def test_encryption_inside_encryption_is_rejected_inside(keyed: tuple[Daemon, bytes]) -> None:
    daemon, key = keyed
    nested = Messages()
    nested.encrypted.aes256cbc_sha512 = seal(
        frame(request(nic_add=nic("nested"))).SerializeToString(), key
    )
    data = Messages()
    data.encrypted.aes256cbc_sha512 = seal(nested.SerializeToString(), key)
    reply = _raw(daemon.client(), data.SerializeToString())
    inner = Messages()
    inner.ParseFromString(_deployed_unseal(reply.encrypted.aes256cbc_sha512, key))
    assert _clear_rejection(inner)
    assert list(ok(daemon.client(key=key), nic_list=True).nic_list) == []


def test_key_from_the_config_file(
    daemon_factory: DaemonFactory, key_file: tuple[str, bytes], tmp_path: os.PathLike[str]
) -> None:
    path, key = key_file
    config = os.path.join(tmp_path, "butterfly.ini")
    with open(config, "w", encoding="utf-8") as file:
        file.write(f"[security]\nencryption_key_path = {path}\n")
    daemon = daemon_factory(config_path=config)
    daemon.start()
    ok(daemon.client(key=key), nic_list=True)
    with pytest.raises(ClientError, match="REJECTED"):
        daemon.client().call(request(nic_list=True))


def _bad_key(path: str, content: bytes) -> str:
    with open(path, "wb") as file:
        file.write(content)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"c2hvcnQ=\n", "decodes to 5 bytes"),
        (None, "decodes to 31 bytes"),
        (None, "decodes to 33 bytes"),
        (b"this is not base64 at all!!\n", "not base64"),
        (b"", "decodes to 0 bytes"),
        (None, "cannot be read"),
    ],
    ids=["5-bytes", "31-bytes", "33-bytes", "not-base64", "empty", "missing"],
)
def test_bad_key_file_stops_the_daemon(
    daemon_factory: DaemonFactory,
    tmp_path: os.PathLike[str],
    content: bytes | None,
    message: str,
) -> None:
    path = os.path.join(tmp_path, "api.key")
    if message == "decodes to 31 bytes":
        write_key(path, os.urandom(31))
    elif message == "decodes to 33 bytes":
        write_key(path, os.urandom(33))
    elif content is not None:
        _bad_key(path, content)
    daemon = daemon_factory(key_path=path)
    daemon.spawn()
    assert daemon.wait_exit(timeout=15) == 1
    log = daemon.log()
    assert f"key file {path}" in log and message in log, log
    assert "Traceback" not in log
