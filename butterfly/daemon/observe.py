"""What the daemon notes about each API request it answers, outside the API itself.

:class:`ObservedAnswer` wraps the handlers' answer function: while a request
is answered, the journal's context holds what it is about (its type, its
message id, the vnic, VNI and security group it names), and once answered,
its type, result and duration go to a listener (the metrics). The API
package stays unaware of logs' structure and of metrics.
"""

import time
from collections.abc import Callable

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.daemon.journal import request_context

__all__ = ["AnswerListener", "ObservedAnswer", "request_fields"]

AnswerListener = Callable[[str, bool, float], None]
"""Called after each answer: request type ("none" if absent), success, seconds."""

_VNIC_BY_ID = ("nic_del", "nic_details", "nic_export", "nic_stats")
_SG_BY_ID = ("sg_del", "sg_rule_list", "sg_member_list", "sg_details")
_SG_BY_FIELD = ("sg_rule_add", "sg_rule_del", "sg_member_add", "sg_member_del")


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def request_fields(message: MessageV0) -> dict[str, str]:
    """Journal fields naming what ``message`` is about; only those it carries."""
    fields: dict[str, str] = {}
    if message.HasField("message_id"):
        fields["REQUEST_ID"] = _text(message.message_id)
    if not message.HasField("request"):
        return fields
    request = message.request
    kind = request.WhichOneof("request")
    if kind is None:
        return fields
    fields["REQUEST"] = kind
    if kind == "nic_add":
        fields["VNIC"] = request.nic_add.id
        fields["VNI"] = str(request.nic_add.vni)
    elif kind == "nic_update":
        fields["VNIC"] = request.nic_update.id
    elif kind in _VNIC_BY_ID:
        fields["VNIC"] = getattr(request, kind)
    elif kind == "sg_add":
        fields["SG"] = request.sg_add.id
    elif kind in _SG_BY_ID:
        fields["SG"] = getattr(request, kind)
    elif kind in _SG_BY_FIELD:
        fields["SG"] = getattr(request, kind).sg_id
    elif kind in ("vni_peer_add", "vni_peer_del"):
        fields["VNI"] = str(getattr(request, kind).vni)
    return {name: value for name, value in fields.items() if value}


class ObservedAnswer:
    """``answer`` with the request's journal context around it and ``listener`` after it."""

    def __init__(
        self,
        answer: Callable[[MessageV0], MessageV0],
        listener: AnswerListener | None = None,
    ) -> None:
        self._answer = answer
        self._listener = listener

    def __call__(self, message: MessageV0) -> MessageV0:
        started = time.perf_counter()
        fields = request_fields(message)
        with request_context(fields):
            reply = self._answer(message)
        if self._listener is not None:
            self._listener(
                fields.get("REQUEST", "none"),
                reply.response.status.status,
                time.perf_counter() - started,
            )
        return reply
