"""Our additions leave a reply unless the request asked (butterfly.api.additions)."""

from butterfly.api.additions import asks_for_additions, strip_additions
from butterfly.api.proto.message0_pb2 import MessageV0

Request = MessageV0.Request
Nic = MessageV0.Nic


def test_upstream_requests_do_not_ask() -> None:
    for request in (
        Request(nic_details=""),
        Request(nic_add=Nic(id="a", mac="52:54:00:00:00:01", vni=1, type=Nic.TAP)),
        Request(sg_add=MessageV0.Sg(id="s", rule=[MessageV0.Rule(direction=1, protocol=-1)])),
    ):
        assert not asks_for_additions(request), request


def test_our_field_our_request_or_our_enum_value_asks() -> None:
    assert asks_for_additions(Request(nic_details="", with_additions=True))
    assert asks_for_additions(Request(vni_peer_list=True))
    assert asks_for_additions(Request(nic_import=MessageV0.NicImportReq(id="a", data=b"")))
    netns = Nic(id="a", mac="52:54:00:00:00:01", vni=1, type=Nic.NETNS, path="ns")
    assert asks_for_additions(Request(nic_add=netns))


def test_strip_takes_our_fields_out_and_downgrades_netns() -> None:
    response = MessageV0.Response()
    response.status.status = True
    response.nic_details.add(id="a", mac="52:54:00:00:00:01", vni=1, type=Nic.NETNS, mtu=1450)
    response.nic_details.add(id="b", mac="52:54:00:00:00:02", vni=1, type=Nic.TAP, mtu=1450)
    response.vni_peer_list.add(vni=1, peer=["192.0.2.1"])
    strip_additions(response)
    assert [(n.type, n.HasField("mtu")) for n in response.nic_details] == [
        (Nic.TAP, False),
        (Nic.TAP, False),
    ]
    assert not response.vni_peer_list
    assert response.status.status


def test_strip_keeps_everything_upstream_has() -> None:
    response = MessageV0.Response()
    response.status.status = True
    nic = response.nic_details.add(id="a", mac="52:54:00:00:00:01", vni=1, ip=["10.0.0.1"])
    nic.type = Nic.VHOST_USER_SERVER
    nic.packet_trace = False
    response.sg_details.add(id="s").rule.add(direction=1, protocol=6, port_start=1, port_end=2)
    before = response.SerializeToString(deterministic=True)
    strip_additions(response)
    assert response.SerializeToString(deterministic=True) == before
