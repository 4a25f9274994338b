"""The start-up warning about an API open to every address in clear text."""

import pytest

from butterfly.daemon.exposure import exposure_warning


@pytest.mark.parametrize(
    "endpoint", ["tcp://0.0.0.0:9999", "tcp://*:9999", "tcp://[::]:9999", "TCP://0.0.0.0:1"]
)
def test_a_wildcard_in_clear_text_is_named(endpoint: str) -> None:
    warning = exposure_warning(endpoint, encrypted=False)
    assert warning is not None
    assert endpoint in warning
    assert "-k" in warning


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://192.0.2.1:9999", "tcp://127.0.0.1:9999", "tcp://[2001:db8::1]:9999", "ipc:///run/a"],
)
def test_a_bound_address_or_a_local_socket_is_not(endpoint: str) -> None:
    assert exposure_warning(endpoint, encrypted=False) is None


def test_a_key_silences_it() -> None:
    assert exposure_warning("tcp://0.0.0.0:9999", encrypted=True) is None
