"""Fixtures for end-to-end tests: real QEMU guests (the machinery is in guest.py) and
switch labs of real butterflyd hosts (butterfly_lab.lab).

`guest_image` builds (or finds in the cache) the image once per session; `guests` hands a
test a factory whose guests are all killed and cleaned up when the test ends, pass or fail.
`lab` is one lab per test module (hosts are shared by the module's tests, which use
distinct vnic ids and VNIs), closed when the module ends, pass or fail. Root and QEMU are
the tests' to declare (markers ``root`` and ``qemu``, checked by tests/conftest.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from butterfly_lab.guest import GuestFactory, GuestImage, build_image, reap_orphans
from butterfly_lab.lab import Lab

# Pin the kernel with NAME or NAME=VERSION (default: what linux-image-amd64 depends on).
KERNEL_ENV = "BUTTERFLY_GUEST_KERNEL"


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    # Guests of an earlier run that was killed outright (SIGKILL, OOM) are still running.
    reaped = reap_orphans()
    if reaped:
        logging.getLogger(__name__).warning("killed orphaned guest QEMUs %s", reaped)
    return build_image(kernel_package=os.environ.get(KERNEL_ENV) or None)


@pytest.fixture
def guests(guest_image: GuestImage) -> Iterator[GuestFactory]:
    factory = GuestFactory(guest_image)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module", params=["c", "python"])
def vhost_loop(request: pytest.FixtureRequest) -> str:
    """The vhost-user modules run once per loop of the backend (butterflyd
    --vhost-loop): the C extension and its Python fallback."""
    loop: str = request.param
    return loop


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    made = Lab()
    try:
        yield made
    finally:
        made.close()
