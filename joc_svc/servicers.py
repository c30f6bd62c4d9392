"""JOC's gRPC edge: Inventory, Deployment and Order services. Thin: validation and naming rules live
in naming/inventory, persistence in store, order semantics in projection (and ostinato.workflow).
ostinato.rpc turns the named errors raised here into status codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from gen.ostinato.common.v1 import items_pb2, order_pb2
from gen.ostinato.controller.v1 import controller_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from joc_svc import convert, inventory, naming
from joc_svc.controllers import CALL_TIMEOUT, ControllerLink
from joc_svc.events import Hub
from joc_svc.projection import Projected, is_final, replay
from joc_svc.store import DeploymentRow, ObjectRow, Store
from ostinato import tracing
from ostinato.errors import FailedPrecondition, InvalidArgument, NotFound

# Until accounts exist (a later issue), callers may name themselves and their reason in metadata.
ACCOUNT_METADATA = "x-ostinato-account"
REASON_METADATA = "x-ostinato-reason"


@dataclass
class Joc:
    """What the three services share."""

    store: Store
    hub: Hub
    controllers: dict[str, ControllerLink]  # in command-line order: the first is the default
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def controller(self, controller_id: str, field: str = "controller_id") -> ControllerLink:
        if not self.controllers:
            raise FailedPrecondition("JOC knows no controller; start it with --controller ID=HOST:PORT")
        if not controller_id:
            return next(iter(self.controllers.values()))
        link = self.controllers.get(controller_id)
        if link is None:
            raise NotFound(
                f"unknown controller {controller_id!r} (known: {', '.join(self.controllers)})", field=field
            )
        return link

    async def audit(self, context: grpc.aio.ServicerContext, action: str, obj: str) -> None:
        account, reason = _caller(context)
        await asyncio.to_thread(self.store.audit, account, action, obj, reason, self.clock())


class InventoryServicer(joc_pb2_grpc.InventoryServiceServicer):
    def __init__(self, joc: Joc) -> None:
        self.joc = joc

    async def PutObject(
        self, request: joc_pb2.PutObjectRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.PutObjectResponse:
        path = naming.check_path(request.path)
        text = inventory.canonical_draft(request.type, request.json, path)
        row = await asyncio.to_thread(self.joc.store.put_object, path, request.type, text, self.joc.clock())
        await self.joc.audit(context, "put", _object_name(row))
        return joc_pb2.PutObjectResponse(object=convert.object_pb(row))

    async def GetObject(
        self, request: joc_pb2.GetObjectRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.GetObjectResponse:
        row = await asyncio.to_thread(
            self.joc.store.get_object, naming.check_path(request.path), request.type
        )
        return joc_pb2.GetObjectResponse(object=convert.object_pb(row))

    async def ListObjects(
        self, request: joc_pb2.ListObjectsRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ListObjectsResponse:
        folder = naming.check_folder(request.folder)
        rows = await asyncio.to_thread(self.joc.store.list_objects, folder, request.recursive, request.type)
        return joc_pb2.ListObjectsResponse(objects=[convert.object_pb(r) for r in rows])

    async def RemoveObject(
        self, request: joc_pb2.RemoveObjectRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.RemoveObjectResponse:
        row = await asyncio.to_thread(
            self.joc.store.remove_object, naming.check_path(request.path), request.type
        )
        await self.joc.audit(context, "remove", _object_name(row))
        return joc_pb2.RemoveObjectResponse()


class DeploymentServicer(joc_pb2_grpc.DeploymentServiceServicer):
    def __init__(self, joc: Joc) -> None:
        self.joc = joc

    async def Deploy(
        self, request: joc_pb2.DeployRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.DeployResponse:
        if not request.paths:
            raise InvalidArgument("give the paths of objects or folders to deploy", field="paths")
        if request.controller_ids:
            links = [self.joc.controller(c, "controller_ids") for c in dict.fromkeys(request.controller_ids)]
        else:
            links = list(self.joc.controllers.values()) or [self.joc.controller("")]  # the latter raises
        found = await asyncio.to_thread(self.joc.store.objects_to_deploy, list(request.paths))
        skipped = {(o.path, o.type): inventory.not_deployable_reason(o.type) for o in found}
        objects = [o for o in found if not skipped[(o.path, o.type)]]
        now = self.joc.clock()
        version_id = naming.new_version_id(now)
        items = [inventory.deployable(o.type, o.path, o.json, version_id) for o in objects]
        account, _ = _caller(context)

        async def deploy_to(link: ControllerLink) -> tuple[ControllerLink, Exception | None]:
            try:
                await link.stub.DeployItems(
                    controller_pb2.DeployItemsRequest(items=items), timeout=CALL_TIMEOUT
                )
                return link, None
            except grpc.aio.AioRpcError as e:
                return link, link.error(e)

        outcomes = await asyncio.gather(*(deploy_to(link) for link in links)) if items else []
        confirmed_at = self.joc.clock()
        history = [
            DeploymentRow(
                path=o.path,
                type=o.type,
                version_id=version_id,
                controller_id=link.id,
                status=joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED
                if error
                else joc_pb2.DEPLOYMENT_STATUS_DEPLOYED,
                message=str(error) if error else "",
                account=account,
                requested_at=now,
                confirmed_at=None if error else confirmed_at,
            )
            for link, error in outcomes
            for o in objects
        ] + [
            DeploymentRow(
                path=o.path,
                type=o.type,
                version_id="",
                controller_id=link.id,
                status=joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED,
                message=skipped[(o.path, o.type)],
                account=account,
                requested_at=now,
                confirmed_at=None,
            )
            for link in links
            for o in found
            if skipped[(o.path, o.type)]
        ]
        rows = await asyncio.to_thread(self.joc.store.record_deployments, history)
        targets = ", ".join(link.id for link in links)
        await self.joc.audit(
            context, "deploy", f"{' '.join(o.path for o in objects)} {version_id} to {targets}"
        )
        # The controller's verdict on the caller's objects (unknown agent, bad item) is the
        # caller's error; an unreachable controller is only history.
        for _, error in outcomes:
            if isinstance(error, (InvalidArgument, NotFound)):
                raise error
        return joc_pb2.DeployResponse(deployments=[convert.deployment_pb(r) for r in rows])

    async def ListDeployments(
        self, request: joc_pb2.ListDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ListDeploymentsResponse:
        rows = await asyncio.to_thread(self.joc.store.list_deployments, request.path, request.limit)
        return joc_pb2.ListDeploymentsResponse(deployments=[convert.deployment_pb(r) for r in rows])


class OrderServicer(joc_pb2_grpc.OrderServiceServicer):
    def __init__(self, joc: Joc) -> None:
        self.joc = joc

    async def AddOrder(
        self, request: joc_pb2.AddOrderRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.AddOrderResponse:
        workflow_path = naming.check_path(request.workflow_path, "workflow_path")
        link = self.joc.controller(request.controller_id)
        now = self.joc.clock()
        order_id = request.order_id or naming.new_order_id(now)
        new_order = controller_pb2.NewOrder(
            id=order_id,
            workflow_path=workflow_path,
            arguments=dict(request.arguments),
            trace_parent=tracing.current_traceparent(),
        )
        if request.HasField("scheduled_for"):
            new_order.scheduled_for.CopyFrom(request.scheduled_for)
        try:
            response = await link.stub.AddOrders(
                controller_pb2.AddOrdersRequest(orders=[new_order]), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as e:
            error = link.error(e)
            if isinstance(error, NotFound) and workflow_path not in str(error):
                raise NotFound(f"workflow {workflow_path}: {error}") from None
            raise error from None
        added = response.orders[0] if response.orders else controller_pb2.AddedOrder(id=order_id)
        # FRESH until the controller's events tell more; its OrderAdded replaces this row's order.
        order = order_pb2.Order(
            id=order_id,
            workflow_path=workflow_path,
            workflow_version_id=added.workflow_version_id,
            arguments=dict(request.arguments),
            state=order_pb2.ORDER_STATE_FRESH,
            trace_parent=new_order.trace_parent,
        )
        if request.HasField("scheduled_for"):
            order.scheduled_for.CopyFrom(request.scheduled_for)
        await asyncio.to_thread(self.joc.store.add_order, order, link.id, now)
        await self.joc.audit(context, "add order", f"{order_id} {workflow_path} on {link.id}")
        return joc_pb2.AddOrderResponse(
            order_id=order_id, workflow_version_id=added.workflow_version_id, controller_id=link.id
        )

    async def ListOrders(
        self, request: joc_pb2.ListOrdersRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ListOrdersResponse:
        rows = await asyncio.to_thread(
            self.joc.store.list_orders, request.state, request.workflow_path, request.limit
        )
        return joc_pb2.ListOrdersResponse(orders=[convert.summary_pb(r) for r in rows])

    async def GetOrder(
        self, request: joc_pb2.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.GetOrderResponse:
        row = await asyncio.to_thread(self.joc.store.get_order, _order_id(request.order_id))
        events = await asyncio.to_thread(self.joc.store.order_events, request.order_id)
        return joc_pb2.GetOrderResponse(summary=convert.summary_pb(row), events=events)

    async def WatchOrder(
        self, request: joc_pb2.WatchOrderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[joc_pb2.WatchOrderResponse]:
        order_id = _order_id(request.order_id)
        # Subscribe before reading, so nothing committed in between is missed.
        async with self.joc.hub.subscribe(order_id) as queue:
            row, events = await asyncio.to_thread(self.joc.store.order_history, order_id)
            last_id = 0
            projected = Projected(None)
            for event, projected in replay(events, row.projected):
                yield convert.watch_pb(event, projected)
                last_id = event.id
            if is_final(projected) or is_final(row.projected):
                return
            while True:
                applied = await queue.get()
                if applied.event.id <= last_id:
                    continue
                last_id = applied.event.id
                yield convert.watch_pb(applied.event, applied.projected)
                if is_final(applied.projected):
                    return

    async def GetOrderLog(
        self, request: joc_pb2.GetOrderLogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[joc_pb2.GetOrderLogResponse]:
        order_id = _order_id(request.order_id)
        async with self.joc.hub.subscribe(order_id) as queue:
            # The row first: if it is final, every chunk before its end is committed for the read after.
            row = await asyncio.to_thread(self.joc.store.get_order, order_id)
            logs = await asyncio.to_thread(self.joc.store.order_logs, order_id)
            last_seq = 0
            for log_row in logs:
                yield convert.log_pb(log_row)
                last_seq = log_row.seq
            if not request.follow or is_final(row.projected):
                return
            while True:
                applied = await queue.get()
                if applied.event.id <= last_seq:
                    continue
                if applied.event.WhichOneof("kind") == "order_std_written":
                    written = applied.event.order_std_written
                    yield joc_pb2.GetOrderLogResponse(
                        stream=written.stream, chunk=written.chunk, timestamp=applied.event.timestamp
                    )
                if is_final(applied.projected):
                    return


def _caller(context: grpc.aio.ServicerContext) -> tuple[str, str]:
    metadata = dict(context.invocation_metadata() or ())
    return str(metadata.get(ACCOUNT_METADATA, "anonymous")), str(metadata.get(REASON_METADATA, ""))


def _order_id(order_id: str) -> str:
    if not order_id:
        raise InvalidArgument("give an order id", field="order_id")
    return order_id


def _object_name(row: ObjectRow) -> str:
    return f"{naming.enum_word(items_pb2.ItemType, row.type).lower()} {row.path}"
