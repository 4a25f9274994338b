"""Frame encryption: the deployed peers' fixed vector, tampering, and key files."""

import base64
import os
from pathlib import Path

import pytest

from butterfly.api.crypto import KEY_SIZE, load_key, seal, unseal
from butterfly.errors import ConfigError, ProtocolError

KEY = bytes(range(32))
IV = bytes(range(16))
# shared/protocol.md: checked against the deployed C++ client's implementation
VECTOR = bytes.fromhex(
    "000102030405060708090a0b0c0d0e0f5877a7a9f33c3b288fc3bbfc0e80693b"
    "9f21fd273a1af325b6345aa2ae827b6f6366e0a2b54ba9361231cd43c58b7abb"
    "095dc34de24981a4439efd67584906ff8c634c115dfa29cb7055db1d95e8bfaa"
)


def test_seal_matches_the_deployed_vector() -> None:
    assert seal(b"butterfly", KEY, IV) == VECTOR


def test_unseal_opens_the_deployed_vector() -> None:
    assert unseal(VECTOR, KEY) == b"butterfly"


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 47, 48, 1000])
def test_round_trip_and_padding(size: int) -> None:
    content = os.urandom(size)
    blob = seal(content, KEY)
    assert len(blob) % 16 == 0
    padded = len(blob) - 16 - 64 - size
    assert 1 <= padded <= 16  # a full block when already aligned
    assert unseal(blob, KEY) == content


def test_each_seal_uses_a_fresh_iv() -> None:
    assert seal(b"x", KEY)[:16] != seal(b"x", KEY)[:16]


def test_wrong_key() -> None:
    wrong = bytes(range(1, 33))
    with pytest.raises(ProtocolError, match="wrong key"):
        unseal(VECTOR, wrong)


def test_tampered_digest() -> None:
    blob = bytearray(seal(b"butterfly", KEY, IV))
    blob[20] ^= 0x01  # a ciphertext byte of the first block: the digest no longer matches
    with pytest.raises(ProtocolError, match=r"SHA-512 digest|padding"):
        unseal(bytes(blob), KEY)


def test_bad_padding() -> None:
    blob = bytearray(VECTOR)
    blob[-17] ^= 0x01  # CBC: flips the same bit of the last plaintext byte, the pad value
    with pytest.raises(ProtocolError, match="bad padding"):
        unseal(bytes(blob), KEY)


@pytest.mark.parametrize("length", [0, 16, 80, 95, 97, 111])
def test_bad_length(length: int) -> None:
    with pytest.raises(ProtocolError, match=f"encrypted blob of {length} bytes"):
        unseal(VECTOR[:length] + bytes(max(0, length - len(VECTOR))), KEY)


# key files


def write(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def test_key_file_as_openssl_writes_it(tmp_path: Path) -> None:
    key = os.urandom(KEY_SIZE)
    assert load_key(write(tmp_path / "k", base64.b64encode(key) + b"\n")) == key


def test_key_file_without_newline_and_with_crlf(tmp_path: Path) -> None:
    key = os.urandom(KEY_SIZE)
    assert load_key(write(tmp_path / "a", base64.b64encode(key))) == key
    assert load_key(write(tmp_path / "b", base64.b64encode(key) + b"\r\n")) == key


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_key_of_the_wrong_size(tmp_path: Path, size: int) -> None:
    path = write(tmp_path / "k", base64.b64encode(os.urandom(size)) + b"\n")
    with pytest.raises(
        ConfigError,
        match=f"^key file {path}: decodes to {size} bytes, an AES-256 key needs 32$",
    ):
        load_key(path)


@pytest.mark.parametrize(
    "content",
    [b"not base64 at all!\n", b"AAAA*AAA\n", b"\xff\xfe\n", b"QUJD\n=garbage="],
    ids=["words", "star", "binary", "trailing"],
)
def test_key_not_base64(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "k", content)
    with pytest.raises(ConfigError, match=f"^key file {path}: is not base64"):
        load_key(path)


def test_raw_32_byte_key_is_refused(tmp_path: Path) -> None:
    """32 raw bytes are not the format: refused, never used as-is."""
    path = write(tmp_path / "k", b"A" * 32)
    with pytest.raises(ConfigError, match=f"^key file {path}: decodes to 24 bytes"):
        load_key(path)


def test_missing_key_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=f"^key file {path}: cannot be read: No such file"):
        load_key(path)


def test_key_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_key(str(tmp_path))
