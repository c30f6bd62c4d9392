"""The controller's core types <-> its service protos (the common protos are the domain's own)."""

from __future__ import annotations

from controller_svc.core import Added, NewOrder, TransferOrders
from gen.ostinato.controller.v1 import controller_pb2 as pb


def new_order(proto: pb.NewOrder) -> NewOrder:
    return NewOrder(
        id=proto.id,
        workflow_path=proto.workflow_path,
        workflow_version_id=proto.workflow_version_id,
        arguments=dict(proto.arguments),
        scheduled_for_ms=proto.scheduled_for.ToMilliseconds() if proto.HasField("scheduled_for") else None,
        trace_parent=proto.trace_parent,
    )


def added_order(added: Added) -> pb.AddedOrder:
    return pb.AddedOrder(id=added.id, workflow_version_id=added.workflow_version_id, existed=added.existed)


def transfer_orders(proto: pb.TransferOrdersRequest) -> TransferOrders:
    return TransferOrders(
        workflow_path=proto.workflow_path,
        order_ids=tuple(proto.order_ids),
        to_version_id=proto.workflow_version_id,
        from_ms=proto.scheduled_from.ToMilliseconds() if proto.HasField("scheduled_from") else None,
    )
