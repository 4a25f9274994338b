"""Handlers of MessageV0 requests: one function per request type.

Every handler has the same shape: validate and convert the protobuf into
model objects, call the service, fill the response. A handler signals
failure by raising a ButterflyError; :meth:`V0Handlers.answer` turns it into
``status: false`` with the error's description, and turns any other
exception (a bug) into an internal error, so no request bytes can take the
daemon down.
"""

import logging
import time
from collections.abc import Callable
from typing import Protocol

from butterfly.api.additions import asks_for_additions, strip_additions
from butterfly.api.convert import (
    nic_to_proto,
    rule_from_proto,
    rule_to_proto,
    sg_from_proto,
    sg_to_proto,
    update_from_proto,
    vnic_from_proto,
)
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.errors import BadRequest, ButterflyError
from butterfly.service import Switch
from butterfly.service.drift import DriftReport
from butterfly.service.startup import ReconcileStatus

__all__ = ["App", "V0Handlers"]

log = logging.getLogger(__name__)

Request = MessageV0.Request
Response = MessageV0.Response


class App(Protocol):
    """What the daemon itself (not the switch) answers for."""

    started_at: float

    def set_log_level(self, level: str) -> None:
        """Raises BadRequest for an unknown level."""

    def request_quit(self) -> None:
        """Stop after this reply is sent."""

    def reconcile_status(self) -> ReconcileStatus | None:
        """The start-up reconcile's progress (None: the daemon runs none)."""

    def drift_report(self) -> DriftReport | None:
        """Foreign changes to the kernel and their repairs; None: not watched."""


class V0Handlers:
    def __init__(self, *, switch: Switch, app: App) -> None:
        self._switch = switch
        self._app = app
        self.request_counter = 0
        self._handlers: dict[str, Callable[[Request, Response], None]] = {
            "nic_add": self._nic_add,
            "nic_update": self._nic_update,
            "nic_del": self._nic_del,
            "nic_list": self._nic_list,
            "nic_details": self._nic_details,
            "nic_export": self._nic_export,
            "nic_stats": self._nic_stats,
            "nic_import": self._nic_import,
            "sg_add": self._sg_add,
            "sg_del": self._sg_del,
            "sg_list": self._sg_list,
            "sg_rule_add": self._sg_rule_add,
            "sg_rule_del": self._sg_rule_del,
            "sg_rule_list": self._sg_rule_list,
            "sg_member_add": self._sg_member_add,
            "sg_member_del": self._sg_member_del,
            "sg_member_list": self._sg_member_list,
            "sg_details": self._sg_details,
            "app_status": self._app_status,
            "app_quit": self._app_quit,
            "app_config": self._app_config,
            "vni_peer_add": self._vni_peer_add,
            "vni_peer_del": self._vni_peer_del,
            "vni_peer_list": self._vni_peer_list,
        }

    def answer(self, message: MessageV0) -> MessageV0:
        """The answer to one MessageV0; never raises."""
        self.request_counter += 1
        reply = MessageV0()
        if message.HasField("message_id"):
            # Copied as the bytes that came: proto2 strings need not be UTF-8,
            # and such a string reads as bytes that cannot be assigned back.
            reply.CopyFrom(message)
            reply.ClearField("request")
            reply.ClearField("response")
            reply.DiscardUnknownFields()
        response = reply.response
        kind = message.request.WhichOneof("request") if message.HasField("request") else None
        try:
            if kind is None:
                raise BadRequest("Bad request: the message holds no request")
            self._handlers[kind](message.request, response)
            response.status.status = True
        except ButterflyError as error:
            log.info("%s failed: %s", kind, error)
            response.Clear()
            response.status.status = False
            response.status.error.description = str(error)
        except Exception:
            log.exception("internal error while answering %s", kind)
            response.Clear()
            response.status.status = False
            response.status.error.description = f"Internal error while answering {kind}"
        if not asks_for_additions(message.request):
            strip_additions(response)
        return reply

    # vnics

    def _nic_add(self, request: Request, response: Response) -> None:
        attachment = self._switch.add_vnic(vnic_from_proto(request.nic_add))
        response.nic_add.path = attachment.path

    def _nic_update(self, request: Request, response: Response) -> None:
        self._switch.update_vnic(update_from_proto(request.nic_update))

    def _nic_del(self, request: Request, response: Response) -> None:
        self._switch.delete_vnic(request.nic_del)

    def _nic_list(self, request: Request, response: Response) -> None:
        response.nic_list.extend(self._switch.vnic_ids())

    def _nic_details(self, request: Request, response: Response) -> None:
        for details in self._switch.vnic_details(request.nic_details):
            nic_to_proto(details.vnic, details.attachment, response.nic_details.add())

    def _nic_export(self, request: Request, response: Response) -> None:
        response.nic_export.fw_data.data = self._switch.export_vnic(request.nic_export)

    def _nic_import(self, request: Request, response: Response) -> None:
        self._switch.import_sessions(request.nic_import.id, request.nic_import.data)

    def _nic_stats(self, request: Request, response: Response) -> None:
        counters = self._switch.vnic_counters(request.nic_stats)
        response.nic_stats.SetInParent()
        setattr(response.nic_stats, "in", counters.in_bytes)
        response.nic_stats.out = counters.out_bytes
        if counters.sniffed_frames is not None and counters.sniffed_bytes is not None:
            response.nic_stats.sniffed_frames = counters.sniffed_frames
            response.nic_stats.sniffed_bytes = counters.sniffed_bytes

    # security groups

    def _sg_add(self, request: Request, response: Response) -> None:
        self._switch.put_sg(sg_from_proto(request.sg_add))

    def _sg_del(self, request: Request, response: Response) -> None:
        self._switch.delete_sg(request.sg_del)

    def _sg_list(self, request: Request, response: Response) -> None:
        response.sg_list.extend(self._switch.sg_ids())

    def _sg_rule_add(self, request: Request, response: Response) -> None:
        sg_id = request.sg_rule_add.sg_id
        self._switch.add_rule(sg_id, rule_from_proto(sg_id, request.sg_rule_add.rule))

    def _sg_rule_del(self, request: Request, response: Response) -> None:
        sg_id = request.sg_rule_del.sg_id
        self._switch.delete_rule(sg_id, rule_from_proto(sg_id, request.sg_rule_del.rule))

    def _sg_rule_list(self, request: Request, response: Response) -> None:
        for rule in self._switch.rules(request.sg_rule_list):
            rule_to_proto(rule, response.sg_rule_list.add())

    def _sg_member_add(self, request: Request, response: Response) -> None:
        self._switch.add_member(request.sg_member_add.sg_id, request.sg_member_add.member)

    def _sg_member_del(self, request: Request, response: Response) -> None:
        self._switch.delete_member(request.sg_member_del.sg_id, request.sg_member_del.member)

    def _sg_member_list(self, request: Request, response: Response) -> None:
        response.sg_member_list.extend(self._switch.members(request.sg_member_list))

    def _sg_details(self, request: Request, response: Response) -> None:
        for sg in self._switch.sg_details(request.sg_details):
            sg_to_proto(sg, response.sg_details.add())

    # the daemon

    def _app_status(self, request: Request, response: Response) -> None:
        status = response.app_status
        status.start_date = int(self._app.started_at)
        status.current_date = int(time.time())
        status.request_counter = self.request_counter
        if request.app_status_graph:
            status.graph_dot = self._switch.graph()
        reconcile = self._app.reconcile_status()
        if request.app_status_reconcile and reconcile is not None:
            # Only when asked: deployed clients' .proto lacks the field.
            shown = status.reconcile
            shown.running = reconcile.running
            shown.done = reconcile.done
            shown.total = reconcile.total
            shown.milliseconds = int(reconcile.seconds * 1000)
            if reconcile.problems:
                shown.problems = reconcile.problems
        report = self._app.drift_report() if request.app_status_drift else None
        if report is not None:
            drift = status.drift
            drift.changes_seen = report.changes_seen
            drift.changes_repaired = report.changes_repaired
            drift.repairs = report.repairs
            drift.repair_failures = report.repair_failures
            drift.report_only = report.report_only
            drift.last_changes.extend(report.last_changes)
            if report.last_change_date is not None:
                drift.last_change_date = int(report.last_change_date)

    def _app_quit(self, request: Request, response: Response) -> None:
        self._app.request_quit()

    def _app_config(self, request: Request, response: Response) -> None:
        if request.app_config.HasField("log_level"):
            self._app.set_log_level(request.app_config.log_level)

    # static VXLAN peers (butterfly's extension)

    def _vni_peer_add(self, request: Request, response: Response) -> None:
        self._switch.add_peer(request.vni_peer_add.vni, request.vni_peer_add.peer)

    def _vni_peer_del(self, request: Request, response: Response) -> None:
        self._switch.delete_peer(request.vni_peer_del.vni, request.vni_peer_del.peer)

    def _vni_peer_list(self, request: Request, response: Response) -> None:
        for vni, peers in self._switch.peers().items():
            response.vni_peer_list.add(vni=vni, peer=peers)
