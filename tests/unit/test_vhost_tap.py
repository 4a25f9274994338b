"""What the tap is told follows what the guest negotiated."""

from butterfly.vhost.protocol import Feature
from butterfly.vhost.tap import header_size, offload_flags

TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 1, 2, 4, 8


def test_header_size() -> None:
    assert header_size(0) == 10
    assert header_size(Feature.VERSION_1) == 12
    assert header_size(Feature.MRG_RXBUF) == 12


def test_offloads_need_guest_csum() -> None:
    assert offload_flags(Feature.GUEST_TSO4 | Feature.GUEST_TSO6) == 0
    assert offload_flags(Feature.GUEST_CSUM) == TUN_F_CSUM
    everything = Feature.GUEST_CSUM | Feature.GUEST_TSO4 | Feature.GUEST_TSO6 | Feature.GUEST_ECN
    assert offload_flags(everything) == TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    assert offload_flags(Feature.GUEST_CSUM | Feature.GUEST_ECN) == TUN_F_CSUM


def test_host_offloads_do_not_change_what_the_kernel_sends() -> None:
    assert offload_flags(Feature.CSUM | Feature.HOST_TSO4 | Feature.HOST_TSO6) == 0
