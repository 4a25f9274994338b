"""butterflyd's options and ini file merged into one Config."""

from pathlib import Path

import pytest

from butterfly.daemon.config import DEFAULT_NICE, Config, parse_args
from butterfly.errors import ConfigError


def test_defaults() -> None:
    config = parse_args([])
    assert config == Config()
    assert config.nice == DEFAULT_NICE == -10
    assert config.vhost_workers is None


def test_nice_and_vhost_workers_from_the_command_line() -> None:
    config = parse_args(["--nice", "5", "--vhost-workers", "3"])
    assert (config.nice, config.vhost_workers) == (5, 3)


def test_connection_caps_and_table_from_the_command_line_and_the_file(tmp_path: Path) -> None:
    config = parse_args(["--vnic-max-connections", "0", "--vnic-max-new-connections", "50"])
    assert (config.vnic_max_connections, config.vnic_max_new_connections) == (0, 50)
    assert config.conntrack_max is None
    ini = tmp_path / "butterfly.ini"
    ini.write_text("[general]\nvnic-max-connections = 300\nconntrack-max = 1048576\n")
    config = parse_args(["--vnic-max-connections", "5", "-c", str(ini)])
    assert (config.vnic_max_connections, config.conntrack_max) == (300, 1048576)
    assert config.vnic_max_new_connections == 1000


def test_the_file_overrides_the_command_line(tmp_path: Path) -> None:
    ini = tmp_path / "butterfly.ini"
    ini.write_text("[general]\nnice = 0\nvhost-workers = 1\n")
    config = parse_args(["--nice", "5", "--vhost-workers", "3", "-c", str(ini)])
    assert (config.nice, config.vhost_workers) == (0, 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nice", "-21"], "command line: nice -21 is out of range -20-19"),
        (["--vhost-workers", "0"], "command line: vhost-workers 0 is out of range 1-1024"),
        (["--nic-mtu", "100"], "command line: nic-mtu 100 is out of range 576-65535"),
        (
            ["--vnic-max-connections", "-1"],
            "command line: vnic-max-connections -1 is out of range 0-10000000",
        ),
    ],
)
def test_out_of_range_values_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_args(argv)
    assert str(error.value) == message


def test_a_word_where_a_number_belongs_is_named(tmp_path: Path) -> None:
    ini = tmp_path / "bad.ini"
    ini.write_text("[general]\nnice = low\n")
    with pytest.raises(ConfigError) as error:
        parse_args(["-c", str(ini)])
    assert str(error.value) == f"config file {ini}: nice 'low' is not a number"


def test_sniff_cross_vni_from_the_command_line_or_the_file(tmp_path: Path) -> None:
    assert parse_args([]).sniff_cross_vni is False
    assert parse_args(["--sniff-cross-vni"]).sniff_cross_vni is True
    ini = tmp_path / "butterfly.ini"
    ini.write_text("[general]\nsniff-cross-vni = true\n")
    assert parse_args(["-c", str(ini)]).sniff_cross_vni is True
    ini.write_text("[general]\nsniff-cross-vni = false\n")
    assert parse_args(["--sniff-cross-vni", "-c", str(ini)]).sniff_cross_vni is False


def test_memory_debugging_is_off_unless_asked(tmp_path: Path) -> None:
    assert not parse_args([]).debug_memory
    assert parse_args(["--debug-memory"]).debug_memory
    ini = tmp_path / "butterfly.ini"
    ini.write_text("[general]\ndebug-memory = yes\n")
    assert parse_args(["-c", str(ini)]).debug_memory
    ini.write_text("[general]\ndebug-memory = off\n")
    assert not parse_args(["--debug-memory", "-c", str(ini)]).debug_memory


def test_a_bad_debug_memory_value_is_named(tmp_path: Path) -> None:
    ini = tmp_path / "bad.ini"
    ini.write_text("[general]\ndebug-memory = maybe\n")
    with pytest.raises(ConfigError) as error:
        parse_args(["-c", str(ini)])
    assert str(error.value) == f"config file {ini}: debug-memory 'maybe' is not true or false"


def test_fast_path_from_the_command_line_or_the_file(tmp_path: Path) -> None:
    assert parse_args([]).fast_path == "auto"
    assert parse_args(["--fast-path", "ebpf"]).fast_path == "ebpf"
    ini = tmp_path / "butterfly.ini"
    ini.write_text("[general]\nfast-path = auto\n")
    assert parse_args(["--fast-path", "off", "-c", str(ini)]).fast_path == "auto"
    ini.write_text("[general]\nfast-path = xdp\n")
    with pytest.raises(ConfigError) as error:
        parse_args(["-c", str(ini)])
    assert str(error.value) == f"config file {ini}: fast-path 'xdp' is not one of auto, ebpf, off"


def test_vhost_loop_from_the_command_line_or_the_file(tmp_path: Path) -> None:
    assert parse_args([]).vhost_loop == "auto"
    assert parse_args(["--vhost-loop", "python"]).vhost_loop == "python"
    ini = tmp_path / "butterfly.ini"
    ini.write_text("[general]\nvhost-loop = c\n")
    assert parse_args(["--vhost-loop", "python", "-c", str(ini)]).vhost_loop == "c"
    ini.write_text("[general]\nvhost-loop = turbo\n")
    with pytest.raises(ConfigError) as error:
        parse_args(["-c", str(ini)])
    assert str(error.value) == (
        f"config file {ini}: vhost-loop 'turbo' is not one of auto, c, python"
    )
