"""CurveZMQ settings: daemon options and ini keys, CLI options, key files and keygen."""

import io
import os
import stat
from pathlib import Path

import pytest

from butterfly.api.curve import load_key_pair, load_public_key
from butterfly.cli.args import parse
from butterfly.cli.main import run
from butterfly.daemon.config import parse_args
from butterfly.errors import ConfigError


def test_daemon_options_and_ini_keys(tmp_path: Path) -> None:
    config = parse_args(["--curve-secret-key", "/k/s.key_secret", "--curve-allowed-clients", "/k"])
    assert (config.curve_secret_key_path, config.curve_allowed_clients_dir) == (
        "/k/s.key_secret",
        "/k",
    )
    ini = tmp_path / "butterflyd.ini"
    ini.write_text(
        "[security]\ncurve_secret_key_path = /etc/b/s.key_secret\n"
        "curve_allowed_clients_dir = /etc/b/clients\n"
    )
    config = parse_args(["-c", str(ini)])
    assert config.curve_allowed_clients_dir == "/etc/b/clients"
    assert parse_args([]).curve_secret_key_path is None


@pytest.mark.parametrize(
    "argv", [["--curve-secret-key", "/k/s"], ["--curve-allowed-clients", "/k"]]
)
def test_daemon_options_go_together(argv: list[str]) -> None:
    with pytest.raises(ConfigError, match="go together"):
        parse_args(argv)


def test_cli_options_go_together() -> None:
    options = parse(["--curve-server-key", "s.key", "--curve-key", "c.key_secret", "nic", "list"])
    assert (options.options.curve_server_key, options.options.curve_key) == (
        "s.key",
        "c.key_secret",
    )
    with pytest.raises(ConfigError, match="go together"):
        parse(["--curve-key", "c.key_secret", "nic", "list"])


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run(["curve", "keygen", str(tmp_path / "keys"), "alice"], stdout=out, stderr=err) == 0
    public, secret = tmp_path / "keys" / "alice.key", tmp_path / "keys" / "alice.key_secret"
    assert out.getvalue() == f"public key: {public}\nsecret key: {secret}\n"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    pair = load_key_pair(str(secret))
    assert load_public_key(str(public)) == pair.public
    assert len(pair.public) == len(pair.secret) == 40  # Z85 of 32 bytes
    before = secret.read_bytes()
    assert run(["curve", "keygen", str(tmp_path / "keys"), "alice"], stdout=out, stderr=err) == 1
    assert "exists; not replacing a key" in err.getvalue()
    assert secret.read_bytes() == before


def test_bad_key_files_are_named(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    with pytest.raises(ConfigError, match=f"curve key {garbage}: not a ZeroMQ key file"):
        load_key_pair(str(garbage))
    with pytest.raises(ConfigError, match="not a ZeroMQ key file"):
        load_key_pair(str(tmp_path / "missing.key_secret"))
    run(["curve", "keygen", str(tmp_path), "bob"], stdout=io.StringIO(), stderr=io.StringIO())
    with pytest.raises(ConfigError, match="holds no secret key"):
        load_key_pair(str(tmp_path / "bob.key"))
