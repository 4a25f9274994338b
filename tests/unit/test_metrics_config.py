"""The metrics option: off by default, ADDR:PORT from the command line or the ini file."""

from pathlib import Path

import pytest

from butterfly.daemon.config import parse_args
from butterfly.errors import ConfigError


def test_off_by_default() -> None:
    assert parse_args([]).metrics is None


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:9477", ("::1", 9477)),
        ("[2001:DB8::1]:1", ("2001:db8::1", 1)),
    ],
)
def test_addresses(value: str, address: tuple[str, int]) -> None:
    assert parse_args(["--metrics", value]).metrics == address


@pytest.mark.parametrize(
    "value", ["9477", "localhost:9477", "127.0.0.1:", "127.0.0.1:65536", "::1:9477", "1.2.3.4:x"]
)
def test_bad_addresses_are_named(value: str) -> None:
    with pytest.raises(ConfigError, match=f"metrics '{value}' is not ADDR:PORT"):
        parse_args(["--metrics", value])


def test_the_ini_file_overrides(tmp_path: Path) -> None:
    ini = tmp_path / "butterflyd.ini"
    ini.write_text("[general]\nmetrics = 127.0.0.2:9100\n")
    assert parse_args(["-c", str(ini), "--metrics", "127.0.0.1:1"]).metrics == ("127.0.0.2", 9100)
    ini.write_text("[general]\nmetrics = nowhere\n")
    with pytest.raises(ConfigError, match=f"config file {ini}: metrics 'nowhere'"):
        parse_args(["-c", str(ini)])
