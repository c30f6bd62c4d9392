"""JOC's gRPC edge: Inventory, Deployment, Order, Cluster, Audit and Account services. Thin:
validation and naming rules live in naming/inventory, persistence in store, delivery in deployer,
who may do what in auth, order semantics in projection (and ostinato.workflow), talking to
controller clusters in controllers. ostinato.rpc turns the named errors raised here into status
codes; auth.guard checks each call's permission before it gets here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc

from gen.ostinato.common.v1 import cluster_pb2, commands_pb2, events_pb2, items_pb2
from gen.ostinato.controller.v1 import controller_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from joc_svc import auth, convert, inventory, naming
from joc_svc.auth import AccountStore, Authenticator, Permission
from joc_svc.controllers import CALL_TIMEOUT, ControllerLink
from joc_svc.dailyplan import ChangeKind, DailyPlan, parse_date
from joc_svc.deployer import Deployer
from joc_svc.events import Hub
from joc_svc.instance import Instance
from joc_svc.order_batcher import OrderBatcher
from joc_svc.projection import Projected, is_final, replay
from joc_svc.store import DeploymentRow, ObjectRow, Store
from joc_svc.store.audit import AuditEntry
from ostinato import limits, pgp, signing, tls, tracing
from ostinato.errors import FailedPrecondition, InvalidArgument, NotFound, OstinatoError
from ostinato.ids import new_order_id

log = logging.getLogger(__name__)

LEVELS = ("low", "medium", "high")
# Deploy waits at most this long for the first delivery attempt before it answers.
DEPLOY_WAIT = 5.0
# Each call of a cluster status waits at most this long; a switch-over this long in all.
STATUS_TIMEOUT = 5.0
SWITCHOVER_TIMEOUT = 30.0
# Chunks of job output read from the database at a time when a log is served.
LOG_PAGE = 256


@dataclass
class Joc:
    """What the services share."""

    store: Store
    hub: Hub
    controllers: dict[str, ControllerLink]  # in command-line order: the first is the default
    deployer: Deployer
    accounts: AccountStore
    authenticator: Authenticator
    plan: DailyPlan
    security_level: str
    instance: Instance
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    _signers: dict[tuple[str, str], signing.Signer] = field(default_factory=dict)

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

    def targets(self, controller_ids: Sequence[str]) -> list[ControllerLink]:
        if controller_ids:
            return [self.controller(c, "controller_ids") for c in dict.fromkeys(controller_ids)]
        return list(self.controllers.values()) or [self.controller("")]  # the latter raises

    async def audit(self, action: str, obj: str) -> None:
        caller = auth.current()
        await asyncio.to_thread(self.store.audit, caller.shown_as, action, obj, caller.reason, self.clock())

    async def signer(self) -> signing.Signer:
        """The key deployments are signed with: the root account's (low) or the caller's
        (medium). Never called at level high."""
        account_name = auth.ROOT if self.security_level == "low" else auth.current().account
        account = await asyncio.to_thread(self.accounts.get, account_name)
        if account is None or not account.signing_key or not account.signing_certificate:
            raise FailedPrecondition(
                f"security level {self.security_level}: account {account_name} has no signing key"
                f" (set one: ostinato account key {account_name} --key KEY.pem --cert CERT.pem)"
            )
        key = (account.signing_key, account.signing_certificate)
        if key not in self._signers:
            self._signers[key] = signing.Signer(*key)
        return self._signers[key]

    def skip_reason(self, type: int) -> str:
        """Why an object is recorded "not deployed" instead of being delivered; "" to deliver."""
        reason = inventory.not_deployable_reason(type)
        if not reason and self.security_level == "high" and type in signing.SIGNED_TYPES:
            reason = (
                "security level high: JOC holds no private key; sign outside JOC"
                " (ostinato deploy export --for-signing, then ostinato deploy import)"
            )
        return reason

    async def check_references(self, objects: Sequence[ObjectRow]) -> None:
        keys = await asyncio.to_thread(self.store.object_keys)
        inventory.check_problems(
            inventory.problems(((o.path, o.type, o.json) for o in objects), lambda t, p: (t, p) in keys)
        )

    async def settled(
        self, rows: list[DeploymentRow], no_wait: bool, context: grpc.aio.ServicerContext
    ) -> list[joc_pb2.Deployment]:
        """The rows after the first delivery attempt (or at once with no_wait); a controller's
        rejection of one of them is raised."""
        if no_wait:
            for cid in {r.controller_id for r in rows if r.pending}:
                self.deployer.kick(cid)
        else:
            remaining = context.time_remaining()
            timeout = DEPLOY_WAIT if remaining is None else max(0.0, min(DEPLOY_WAIT, remaining - 0.5))
            await self.deployer.settle(rows, timeout)
        error = self.deployer.rejection(rows)
        if error is not None:
            raise error
        fresh = await asyncio.to_thread(self.store.deployments_by_id, [r.id for r in rows])
        return [convert.deployment_pb(r) for r in fresh]


class InventoryServicer(joc_pb2_grpc.InventoryServiceServicer):
    def __init__(self, joc: Joc) -> None:
        self.joc = joc

    async def PutObject(
        self, request: joc_pb2.PutObjectRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.PutObjectResponse:
        path = naming.check_path(request.path)
        text = inventory.canonical_draft(request.type, request.json, path)
        row = await asyncio.to_thread(self.joc.store.put_object, path, request.type, text, self.joc.clock())
        await self.joc.audit("put", _object_name(row))
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
        if request.recursive:
            folder = naming.check_folder(request.path, "path")
            rows = await asyncio.to_thread(self.joc.store.remove_folder, folder)
            await self.joc.audit("remove", f"folder {folder} ({len(rows)} objects)")
        else:
            row = await asyncio.to_thread(
                self.joc.store.remove_object, naming.check_path(request.path), request.type
            )
            rows = [row]
            await self.joc.audit("remove", _object_name(row))
        return joc_pb2.RemoveObjectResponse(removed=[convert.object_pb(r) for r in rows])

    async def MoveObject(
        self, request: joc_pb2.MoveObjectRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.MoveObjectResponse:
        path = naming.check_path(request.path.rstrip("/") or "/")
        new_path = naming.check_path(request.new_path.rstrip("/") or "/", "new_path")
        if path == new_path:
            raise InvalidArgument("the new path is the old one", field="new_path")
        if new_path.startswith(path + "/"):
            raise InvalidArgument(f"cannot move {path} into itself", field="new_path")
        rows = await asyncio.to_thread(self.joc.store.move, path, request.type, new_path, self.joc.clock())
        await self.joc.audit("move", f"{path} to {new_path} ({len(rows)} objects)")
        return joc_pb2.MoveObjectResponse(moved=[convert.object_pb(r) for r in rows])

    async def ValidateObjects(
        self, request: joc_pb2.ValidateObjectsRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ValidateObjectsResponse:
        store = self.joc.store
        if request.paths:
            rows = await asyncio.to_thread(store.objects_to_deploy, list(request.paths))
        else:
            rows = await asyncio.to_thread(store.list_objects, "/", True)
        keys = await asyncio.to_thread(store.object_keys)
        found = inventory.problems(((o.path, o.type, o.json) for o in rows), lambda t, p: (t, p) in keys)
        return joc_pb2.ValidateObjectsResponse(
            problems=[
                joc_pb2.Problem(path=p.path, type=p.type, field=p.field, message=p.message)  # type: ignore[arg-type]
                for p in found
            ]
        )


class DeploymentServicer(joc_pb2_grpc.DeploymentServiceServicer):
    def __init__(self, joc: Joc) -> None:
        self.joc = joc

    async def Deploy(
        self, request: joc_pb2.DeployRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.DeployResponse:
        joc = self.joc
        if not request.paths:
            raise InvalidArgument("give the paths of objects or folders to deploy", field="paths")
        if request.update_plan_from and request.update_plan_from != "now":
            parse_date(request.update_plan_from, "update_plan_from")
        links = joc.targets(request.controller_ids)
        found = await asyncio.to_thread(joc.store.objects_to_deploy, list(request.paths))
        await joc.check_references(found)
        caller = auth.current()
        now = joc.clock()
        version_id = naming.new_version_id(now)
        reasons = {(o.path, o.type): joc.skip_reason(o.type) for o in found}
        deliver = [o for o in found if not reasons[(o.path, o.type)]]
        signer = await joc.signer() if any(o.type in signing.SIGNED_TYPES for o in deliver) else None
        items = []
        for o in deliver:
            item = inventory.deployable(o.type, o.path, o.json, version_id)
            if signer is not None and o.type in signing.SIGNED_TYPES:
                signer.sign_item(item)
                items.append((item, signer.subject))
            else:
                items.append((item, ""))
        skipped = [
            _not_deployed(o, link.id, reasons[(o.path, o.type)], caller.shown_as, now)
            for link in links
            for o in found
            if reasons[(o.path, o.type)]
        ]
        rows = await asyncio.to_thread(
            joc.store.record_pending, items, [link.id for link in links], caller.shown_as, now, skipped
        )
        targets = ", ".join(link.id for link in links)
        await joc.audit(
            "deploy", f"{' '.join(o.path for o in deliver) or '(nothing)'} {version_id} to {targets}"
        )
        deployments = await joc.settled(rows, request.no_wait, context)
        response = joc_pb2.DeployResponse(deployments=deployments)
        if request.update_plan_from:
            response.transfers.extend(await self._transfer(deployments, request.update_plan_from))
        return response

    async def _transfer(
        self, deployments: Sequence[joc_pb2.Deployment], when: str
    ) -> list[joc_pb2.OrderTransfer]:
        """Deploy's --update-plan-from: orders of each deployed workflow not started and scheduled
        from then on move to the new version, keeping their ids."""
        transfers = []
        for d in deployments:
            if d.type != items_pb2.ITEM_TYPE_WORKFLOW:
                continue
            transfer = joc_pb2.OrderTransfer(
                workflow_path=d.path, workflow_version_id=d.version_id, controller_id=d.controller_id
            )
            if d.status != joc_pb2.DEPLOYMENT_STATUS_DEPLOYED:
                transfer.error = "not deployed yet: no orders moved"
            else:
                try:
                    transfer.order_ids.extend(
                        await self.joc.plan.transfer(d.path, d.version_id, d.controller_id, when)
                    )
                except OstinatoError as e:
                    transfer.error = str(e)
            await self.joc.audit(
                "transfer orders",
                f"{d.path} to {d.version_id} on {d.controller_id} from {when}:"
                f" {transfer.error or f'{len(transfer.order_ids)} orders'}",
            )
            transfers.append(transfer)
        return transfers

    async def Redeploy(
        self, request: joc_pb2.RedeployRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.RedeployResponse:
        joc = self.joc
        folder = naming.check_folder(request.folder)
        links = joc.targets(request.controller_ids)
        caller = auth.current()
        now = joc.clock()
        rows: list[DeploymentRow] = []
        for link in links:
            versions = await asyncio.to_thread(joc.store.versions_deployed_to, link.id, folder)
            if versions:
                rows += await asyncio.to_thread(
                    joc.store.record_pending, versions, [link.id], caller.shown_as, now
                )
                await joc.audit(
                    "redeploy",
                    f"{folder} to {link.id}: "
                    + " ".join(f"{item.path} {item.version_id}" for item, _ in versions),
                )
        if not rows:
            raise NotFound(
                f"nothing below {folder} was deployed to {', '.join(link.id for link in links)}",
                field="folder",
            )
        return joc_pb2.RedeployResponse(deployments=await joc.settled(rows, request.no_wait, context))

    async def Release(
        self, request: joc_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ReleaseResponse:
        joc = self.joc
        if not request.paths:
            raise InvalidArgument("give the paths of calendars, schedules or folders", field="paths")
        found = await asyncio.to_thread(joc.store.objects_to_deploy, list(request.paths))
        releasable = [o for o in found if o.type in inventory.RELEASABLE_TYPES]
        if not releasable:
            raise InvalidArgument(
                f"no calendar or schedule in {' '.join(request.paths)}; deploy other objects", field="paths"
            )
        await joc.check_references(releasable)
        # The plan's changes first: a schedule that can no longer be planned refuses the release.
        overlay = await joc.plan.overlay(releasable)
        paths = [o.path for o in releasable]
        joc.plan.check_release(
            overlay, [o.path for o in releasable if o.type == items_pb2.ITEM_TYPE_SCHEDULE]
        )
        changes = await joc.plan.changes(overlay, False, paths)
        if request.dry_run:
            return joc_pb2.ReleaseResponse(
                released=[convert.object_pb(r) for r in releasable],
                plan_changes=[convert.plan_change_pb(c) for c in changes],
            )
        caller = auth.current()
        rows = await asyncio.to_thread(joc.store.release, releasable, caller.shown_as, joc.clock())
        await joc.audit("release", " ".join(_object_name(r) for r in rows))
        try:
            changes = await joc.plan.changes(overlay, True, paths)
        except OstinatoError as e:
            # Released; releasing again diffs again, so nothing is lost by answering with an error.
            raise FailedPrecondition(
                f"released {' '.join(paths)}, but the daily plan was not updated ({e});"
                " release again when the controller is back"
            ) from None
        if changes:
            added = sum(c.kind is ChangeKind.ADDED for c in changes)
            await joc.audit(
                "update plan",
                f"{added} orders added, {len(changes) - added} removed after release of {' '.join(paths)}",
            )
        joc.plan.wake()
        return joc_pb2.ReleaseResponse(
            released=[convert.object_pb(r) for r in rows],
            plan_changes=[convert.plan_change_pb(c) for c in changes],
        )

    async def ExportForSigning(
        self, request: joc_pb2.ExportForSigningRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ExportForSigningResponse:
        joc = self.joc
        if not request.paths:
            raise InvalidArgument("give the paths of objects or folders to export", field="paths")
        found = await asyncio.to_thread(joc.store.objects_to_deploy, list(request.paths))
        signed = [o for o in found if o.type in signing.SIGNED_TYPES]
        if not signed:
            raise InvalidArgument(
                f"nothing to sign in {' '.join(request.paths)}"
                " (workflows, job resources, file order sources)",
                field="paths",
            )
        await joc.check_references(signed)
        version_id = naming.new_version_id(joc.clock())
        items = [inventory.deployable(o.type, o.path, o.json, version_id) for o in signed]
        await joc.audit("export for signing", f"{' '.join(o.path for o in signed)} {version_id}")
        return joc_pb2.ExportForSigningResponse(items=items)

    async def ImportSigned(
        self, request: joc_pb2.ImportSignedRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ImportSignedResponse:
        joc = self.joc
        if not request.items:
            raise InvalidArgument("the archive holds no items", field="items")
        links = joc.targets(request.controller_ids)
        caller = auth.current()
        now = joc.clock()
        version_id = naming.new_version_id(now)
        checked = [
            inventory.imported(item, f"items[{i}]", version_id) for i, item in enumerate(request.items)
        ]
        keys = await asyncio.to_thread(joc.store.object_keys)
        for item, draft in checked:
            if (item.type, item.path) not in keys:
                # Signed elsewhere (e.g. another JOC's export): the inventory gets the object.
                await asyncio.to_thread(joc.store.put_object, item.path, item.type, draft, now)
        # Signed already: only types controllers do not take yet are left out, at any level.
        deliver = [
            (item, _signer_subject(item))
            for item, _ in checked
            if not inventory.not_deployable_reason(item.type)
        ]
        skipped = [
            DeploymentRow(
                item.path,
                item.type,
                item.version_id,
                link.id,
                joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED,
                inventory.not_deployable_reason(item.type),
                caller.shown_as,
                now,
                None,
            )
            for link in links
            for item, _ in checked
            if inventory.not_deployable_reason(item.type)
        ]
        rows = await asyncio.to_thread(
            joc.store.record_pending, deliver, [link.id for link in links], caller.shown_as, now, skipped
        )
        await joc.audit(
            "import signed",
            " ".join(f"{item.path} {item.version_id}" for item, _ in checked)
            + f" to {', '.join(link.id for link in links)}",
        )
        return joc_pb2.ImportSignedResponse(deployments=await joc.settled(rows, request.no_wait, context))

    async def ListDeployments(
        self, request: joc_pb2.ListDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ListDeploymentsResponse:
        rows = await asyncio.to_thread(
            self.joc.store.list_deployments,
            request.path,
            request.limit,
            request.controller_id,
            request.pending_only,
        )
        return joc_pb2.ListDeploymentsResponse(deployments=[convert.deployment_pb(r) for r in rows])


class OrderServicer(joc_pb2_grpc.OrderServiceServicer):
    def __init__(self, joc: Joc) -> None:
        self.joc = joc
        self.batcher = OrderBatcher(joc.store)

    async def AddOrder(
        self, request: joc_pb2.AddOrderRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.AddOrderResponse:
        workflow_path = naming.check_path(request.workflow_path, "workflow_path")
        limits.check_name(request.order_id, "order_id", "an order id")
        limits.check_arguments(request.arguments, "arguments")
        if request.HasField("scheduled_for"):
            limits.check_timestamp(request.scheduled_for, "scheduled_for")
        link = self.joc.controller(request.controller_id)
        now = self.joc.clock()
        # The id first: a caller that retries after a lost answer asks for the same order again.
        order_id = request.order_id or new_order_id(now)
        tracing.annotate(order_id=order_id, workflow=workflow_path)
        new_order = controller_pb2.NewOrder(
            id=order_id,
            workflow_path=workflow_path,
            arguments=dict(request.arguments),
            trace_parent=tracing.current_traceparent(),
        )
        if request.HasField("scheduled_for"):
            new_order.scheduled_for.CopyFrom(request.scheduled_for)
        caller = auth.current()
        audit = AuditEntry(
            caller.shown_as, "add order", f"{order_id} {workflow_path} on {link.id}", caller.reason, now
        )
        try:
            added = await self.batcher.add(link, new_order, now, audit, _budget(context))
        except OstinatoError as error:
            raise _as_add_order_error(error, workflow_path) from None
        return joc_pb2.AddOrderResponse(
            order_id=order_id,
            workflow_version_id=added.workflow_version_id,
            controller_id=link.id,
            existed=added.existed,
        )

    async def CommandOrders(
        self, request: joc_pb2.CommandOrdersRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.CommandOrdersResponse:
        """Forwards each command to the controller holding its order, one request per controller;
        one result per command, in request order (an error text where it was not accepted)."""
        if not request.commands:
            raise InvalidArgument("give at least one command", field="commands")
        for i, command in enumerate(request.commands):
            if not command.order_id:
                raise InvalidArgument("give the order's id", field=f"commands[{i}].order_id")
            if command.WhichOneof("kind") is None:
                raise InvalidArgument("give cancel, suspend, resume or answer_prompt", field=f"commands[{i}]")
            limits.check_order_command(command, f"commands[{i}]")
        commands = list(request.commands)
        holders = await asyncio.to_thread(self.joc.store.order_controllers, [c.order_id for c in commands])
        results = [commands_pb2.OrderCommandResult(order_id=c.order_id) for c in commands]
        by_controller: dict[str, list[int]] = {}
        for i, command in enumerate(commands):
            controller_id = holders.get(command.order_id)
            if controller_id is None:
                results[i].error = f"no order {command.order_id}"
            elif controller_id not in self.joc.controllers:
                results[
                    i
                ].error = f"order {command.order_id} is on controller {controller_id}, unknown to JOC"
            else:
                by_controller.setdefault(controller_id, []).append(i)

        async def forward(controller_id: str, indexes: list[int]) -> None:
            link = self.joc.controllers[controller_id]
            try:
                response = await link.call(
                    "CommandOrders",
                    controller_pb2.CommandOrdersRequest(commands=[commands[i] for i in indexes]),
                    _budget(context),
                )
            except grpc.aio.AioRpcError as e:
                error = link.error(e)
                for i in indexes:
                    results[i].error = str(error)
                return
            answered = list(response.results)
            if len(answered) == len(indexes):
                for i, result in zip(indexes, answered, strict=True):
                    results[i].error = result.error
            else:
                # Not one result per command: match by order id, missing ones are errors.
                by_id = {r.order_id: r.error for r in answered}
                for i in indexes:
                    results[i].error = by_id.get(
                        commands[i].order_id, f"controller {controller_id} gave no result"
                    )

        await asyncio.gather(*(forward(cid, ix) for cid, ix in by_controller.items()))
        for command, result in zip(commands, results, strict=True):
            where = holders.get(command.order_id, "no controller")
            outcome = f": {result.error}" if result.error else ""
            await self.joc.audit(_command_action(command), f"{command.order_id} on {where}{outcome}")
        return joc_pb2.CommandOrdersResponse(results=results)

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
        kept = _newest_within(events, limits.RESPONSE_EVENTS_BYTES)
        return joc_pb2.GetOrderResponse(
            summary=convert.summary_pb(row), events=kept, events_omitted=len(events) - len(kept)
        )

    async def WatchOrder(
        self, request: joc_pb2.WatchOrderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[joc_pb2.WatchOrderResponse]:
        order_id = _order_id(request.order_id)
        # Subscribe before reading, so nothing committed in between is missed.
        async with self.joc.hub.subscribe(order_id) as subscription:
            last_id = 0
            while True:
                row, events = await asyncio.to_thread(self.joc.store.order_history, order_id)
                projected = Projected(None)
                for event, projected in replay(events, row.projected, row.resynced_at_event):
                    if event.id > last_id:
                        yield convert.watch_pb(event, projected)
                        last_id = event.id
                if is_final(projected) or is_final(row.projected):
                    return
                while (applied := await subscription.get()) is not None:
                    if applied.event.id <= last_id:
                        continue
                    last_id = applied.event.id
                    yield convert.watch_pb(applied.event, applied.projected)
                    if is_final(applied.projected):
                        return
                # Fell behind: the rest from the database, then live again.

    async def GetOrderLog(
        self, request: joc_pb2.GetOrderLogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[joc_pb2.GetOrderLogResponse]:
        order_id = _order_id(request.order_id)
        if request.follow and not self.joc.instance.role.active:
            raise self.joc.instance.not_active()  # live output comes from the active's ingestion
        async with self.joc.hub.subscribe(order_id) as subscription:
            last_seq = 0
            while True:
                # The row first: if it is final, every chunk before its end is committed for the read after.
                row = await asyncio.to_thread(self.joc.store.get_order, order_id)
                while True:  # in pages: a log of gigabytes is not read into memory at once
                    page = await asyncio.to_thread(self.joc.store.order_logs, order_id, last_seq, LOG_PAGE)
                    for log_row in page:
                        yield convert.log_pb(log_row)
                        last_seq = log_row.seq
                    if len(page) < LOG_PAGE:
                        break
                if not request.follow or is_final(row.projected):
                    return
                while (applied := await subscription.get()) is not None:
                    if applied.event.id <= last_seq:
                        continue
                    if applied.event.WhichOneof("kind") == "order_std_written":
                        written = applied.event.order_std_written
                        last_seq = applied.event.id
                        yield joc_pb2.GetOrderLogResponse(
                            stream=written.stream, chunk=written.chunk, timestamp=applied.event.timestamp
                        )
                    if is_final(applied.projected):
                        return
                # Fell behind: the rest from the database, then live again.


class ClusterServicer(joc_pb2_grpc.ClusterServiceServicer):
    def __init__(self, joc: Joc) -> None:
        self.joc = joc

    async def GetClusterStatus(
        self, request: joc_pb2.GetClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.GetClusterStatusResponse:
        link = self.joc.controller(request.controller_id)
        timeout = _budget(context, STATUS_TIMEOUT)
        response = joc_pb2.GetClusterStatusResponse(controller_id=link.id)
        status, failures = await link.cluster_status(timeout)
        if status is not None:
            response.controller.CopyFrom(status)
        else:
            response.controller.nodes.extend(_unanswered(a, why) for a, why in failures)
        response.controller.cluster = response.controller.cluster or link.id
        try:
            overview = await link.call("GetOverview", controller_pb2.GetOverviewRequest(), timeout)
        except grpc.aio.AioRpcError as e:
            response.agents_error = str(link.error(e))
            return response

        async def agent_status(name: str) -> joc_pb2.AgentClusterStatus:
            try:
                answer = await link.call(
                    "GetAgentClusterStatus", controller_pb2.GetAgentClusterStatusRequest(agent=name), timeout
                )
            except grpc.aio.AioRpcError as e:
                return joc_pb2.AgentClusterStatus(agent=name, error=str(link.error(e)))
            return joc_pb2.AgentClusterStatus(
                agent=name,
                status=answer.status,
                subagents=answer.subagents,
                subagents_error=answer.subagents_error,
            )

        response.agents.extend(await asyncio.gather(*(agent_status(a.name) for a in overview.agents)))
        return response

    async def Switchover(
        self, request: joc_pb2.SwitchoverRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.SwitchoverResponse:
        link = self.joc.controller(request.controller_id)
        what = f"agent {request.agent} of controller {link.id}" if request.agent else f"controller {link.id}"
        asked = f"{what} to {request.to_node}" if request.to_node else what
        timeout = _budget(context, SWITCHOVER_TIMEOUT)
        try:
            if request.agent:
                done = await link.call(
                    "AgentSwitchover",
                    controller_pb2.AgentSwitchoverRequest(agent=request.agent, to_node=request.to_node),
                    timeout,
                )
            else:
                done = await link.switchover(request.to_node, timeout)
                # Move JOC's own calls and event stream to the new active node now: the old one
                # answers as passive, and the link follows.
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await link.call("GetOverview", controller_pb2.GetOverviewRequest(), STATUS_TIMEOUT)
        except (grpc.aio.AioRpcError, OstinatoError) as e:
            error = link.error(e) if isinstance(e, grpc.aio.AioRpcError) else e
            await self.joc.audit("switchover", f"{asked}: refused: {error}")
            raise error from None
        await self.joc.audit("switchover", f"{what}: {done.from_node} -> {done.to_node} (term {done.term})")
        return joc_pb2.SwitchoverResponse(
            controller_id=link.id,
            agent=request.agent,
            from_node=done.from_node,
            to_node=done.to_node,
            term=done.term,
        )

    async def GetJocStatus(
        self, request: joc_pb2.GetJocStatusRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.GetJocStatusResponse:
        instance = self.joc.instance
        lease, rows = await instance.status()
        response = joc_pb2.GetJocStatusResponse(
            active_instance=lease.holder if lease.live else "", epoch=lease.epoch, answered_by=instance.id
        )
        for row, role in rows:
            shown = response.instances.add(id=row.id, address=row.address, role=role, web_url=row.web_url)
            shown.last_heartbeat.FromMilliseconds(row.heartbeat_ms)
            shown.started_at.FromMilliseconds(row.started_ms)
        return response

    async def JocSwitchover(
        self, request: joc_pb2.JocSwitchoverRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.JocSwitchoverResponse:
        instance = self.joc.instance
        to = request.to_instance
        if to:
            limits.check_name(to, "to_instance", "an instance id")
        lease = await instance.switchover(
            to,
            _budget(context, SWITCHOVER_TIMEOUT),
            # Recorded while this instance may still write: after the hand-over it writes nothing.
            before=lambda: self.joc.audit("joc switchover", f"{instance.id} -> {to or 'any other instance'}"),
        )
        return joc_pb2.JocSwitchoverResponse(
            from_instance=instance.id, to_instance=lease.holder, epoch=lease.epoch
        )


def _unanswered(address: str, why: str) -> cluster_pb2.ClusterNode:
    unreachable = why.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))
    role = cluster_pb2.NODE_ROLE_UNREACHABLE if unreachable else cluster_pb2.NODE_ROLE_UNSPECIFIED
    return cluster_pb2.ClusterNode(address=address, role=role, error=why)


def _budget(context: grpc.aio.ServicerContext, limit: float = CALL_TIMEOUT) -> float:
    """How long a call to a controller may take: `limit`, within the caller's own deadline."""
    remaining = context.time_remaining()
    return limit if remaining is None else max(0.1, min(limit, remaining - 0.2))


class AuditServicer(joc_pb2_grpc.AuditServiceServicer):
    def __init__(self, joc: Joc) -> None:
        self.joc = joc

    async def ListAuditEntries(
        self, request: joc_pb2.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ListAuditEntriesResponse:
        rows = await asyncio.to_thread(
            self.joc.store.audit_entries, request.limit or 100, request.account, request.action
        )
        return joc_pb2.ListAuditEntriesResponse(entries=[convert.audit_pb(r) for r in rows])


class AccountServicer(joc_pb2_grpc.AccountServiceServicer):
    def __init__(self, joc: Joc) -> None:
        self.joc = joc

    async def PutAccount(
        self, request: joc_pb2.PutAccountRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.PutAccountResponse:
        roles = list(dict.fromkeys(request.roles))
        if not roles or any(r not in auth.ROLE_PERMISSIONS for r in roles):
            raise InvalidArgument(
                "give one or more roles: viewer, editor, deployer, operator, admin", field="roles"
            )
        if request.name == auth.ROOT:
            raise InvalidArgument("the root account's roles stay", field="name")
        subject = None
        if request.cert_subject:
            subject = tls.normalize_dn(request.cert_subject, field="cert_subject")
        row = await asyncio.to_thread(
            self.joc.accounts.put,
            request.name,
            roles,
            self.joc.clock(),
            request.HasField("cert_subject"),
            subject,
        )
        self.joc.authenticator.forget()
        what = f"{row.name} {','.join(auth.role_word(r).lower() for r in row.roles)}"
        if row.cert_subject:
            what += f" certificate {row.cert_subject}"
        await self.joc.audit("put account", what)
        return joc_pb2.PutAccountResponse(account=convert.account_pb(row))

    async def ListAccounts(
        self, request: joc_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ListAccountsResponse:
        rows = await asyncio.to_thread(self.joc.accounts.list)
        return joc_pb2.ListAccountsResponse(accounts=[convert.account_pb(r) for r in rows])

    async def RemoveAccount(
        self, request: joc_pb2.RemoveAccountRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.RemoveAccountResponse:
        await asyncio.to_thread(self.joc.accounts.remove, request.name)
        self.joc.authenticator.forget()
        await self.joc.audit("remove account", request.name)
        return joc_pb2.RemoveAccountResponse()

    async def CreateToken(
        self, request: joc_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.CreateTokenResponse:
        token = await asyncio.to_thread(self.joc.accounts.add_token, request.account, self.joc.clock())
        await self.joc.audit("create token", request.account)
        return joc_pb2.CreateTokenResponse(token=token)

    async def SetSigningKey(
        self, request: joc_pb2.SetSigningKeyRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.SetSigningKeyResponse:
        caller = auth.current()
        name = request.account or caller.account
        if name != caller.account:
            caller.require(Permission.ADMIN, "set another account's signing key")
        if self.joc.security_level == "high":
            raise FailedPrecondition("security level high: JOC holds no private key; sign outside JOC")
        signer = signing.Signer(request.private_key, request.certificate)  # checks they belong together
        row = await asyncio.to_thread(
            self.joc.accounts.set_key, name, request.private_key, signer.certificate_pem
        )
        await self.joc.audit("set signing key", f"{name} {signer.subject}")
        return joc_pb2.SetSigningKeyResponse(account=convert.account_pb(row))

    async def GetCaller(
        self, request: joc_pb2.GetCallerRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.GetCallerResponse:
        caller = auth.current()
        row = await asyncio.to_thread(self.joc.accounts.one, caller.account)
        return joc_pb2.GetCallerResponse(
            account=convert.account_pb(row),
            security_level=self.joc.security_level,
            auth_required=self.joc.authenticator.required,
        )


def _not_deployed(
    o: ObjectRow, controller_id: str, reason: str, account: str, now: datetime
) -> DeploymentRow:
    return DeploymentRow(
        path=o.path,
        type=o.type,
        version_id="",
        controller_id=controller_id,
        status=joc_pb2.DEPLOYMENT_STATUS_NOT_DEPLOYED,
        message=reason,
        account=account,
        requested_at=now,
        confirmed_at=None,
    )


def _signer_subject(item: items_pb2.SignedItem) -> str:
    """Who says they signed an imported item; the controllers verify whether it is so."""
    if item.signature.algorithm == signing.OPENPGP:
        return pgp.issuer_of(item.signature.signature)
    if not item.signature.signer_certificate:
        return ""
    try:
        return signing.subject_text(signing.load_certificates(item.signature.signer_certificate)[0])
    except OstinatoError:
        return ""


def _command_action(command: commands_pb2.OrderCommand) -> str:
    kind = command.WhichOneof("kind")
    if kind == "cancel":
        return "cancel order" + (" (kill)" if command.cancel.kill else "")
    if kind == "suspend":
        return "suspend order" + (" (kill)" if command.suspend.kill else "")
    if kind == "resume":
        return "resume order"
    return "answer prompt"


def _newest_within(events: list[events_pb2.Event], budget: int) -> list[events_pb2.Event]:
    """The newest events whose bytes fit into `budget` (at least the newest one)."""
    start = len(events)
    while start > 0:
        budget -= events[start - 1].ByteSize()
        if budget < 0 and start < len(events):
            break
        start -= 1
    return events[start:]


def _as_add_order_error(error: OstinatoError, workflow_path: str) -> OstinatoError:
    """The controller's error about the order, with its fields named as the caller of AddOrder
    wrote them: the controller names them within its AddOrders request (`orders[0].arguments.x`)."""
    text = str(error)
    if (within := re.match(r"orders\[\d+\]\.", text)) is not None:
        text = text[within.end() :]
        if text.startswith("id: "):
            text = "order_id: " + text.removeprefix("id: ")
    if isinstance(error, NotFound) and workflow_path not in text:
        text = f"workflow {workflow_path}: {text}"
    return error if text == str(error) else type(error)(text)


def _order_id(order_id: str) -> str:
    if not order_id:
        raise InvalidArgument("give an order id", field="order_id")
    return order_id


def _object_name(row: ObjectRow) -> str:
    return f"{naming.enum_word(items_pb2.ItemType, row.type).lower()} {row.path}"
