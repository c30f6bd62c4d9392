"""The web view's pages, the JSON behind them, their live streams and actions.

Reads go through JOC's guarded servicers where a gRPC method answers the question (an order's
watch and log, the daily plan, cluster status, the inventory, deployments); the orders table and
an order's history read JOC's store the way those methods do, after the same permission check.
Every action is a servicer call (AddOrder, CommandOrders, Deploy, SubmitPlan, CancelPlan): the
same checks, errors and audit entries as from the CLI. A form posts to the same URL a script
posts JSON to: the form gets the page back with what happened, the script JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from gen.ostinato.common.v1 import cluster_pb2, commands_pb2, events_pb2, items_pb2, order_pb2, workflow_pb2
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc.auth import Permission
from joc_svc.projection import replay
from joc_svc.store import OrderFilter
from joc_svc.web import access, graph, present
from joc_svc.web.server import WebView, json_of
from ostinato.cli.render import state_word, type_text
from ostinato.errors import FailedPrecondition, InvalidArgument, NotFound, OstinatoError
from ostinato.workflow import positions
from ostinato.workflow.events import outcome_text
from ostinato.workflow.model import parse_workflow
from ostinato.workflow.orders import TERMINAL_STATES

# Changes of many orders reach a table at most this often; it is read again anyway this often.
CHANGES_INTERVAL = 1.0
TABLE_TICK = 30.0
# An order page shows its newest history lines, at most.
HISTORY_LINES = 300
# Deployed workflow versions kept parsed (they never change).
WORKFLOW_CACHE = 256
S = order_pb2.OrderState
WF = items_pb2.ITEM_TYPE_WORKFLOW
Action = Callable[[access.Who, dict[str, Any]], Awaitable[tuple[str, Message]]]


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


class Pages:
    def __init__(self, view: WebView) -> None:
        self.view = view
        self.joc = view.joc
        self.services = view.services
        self._workflows: dict[tuple[str, str], workflow_pb2.Workflow | None] = {}
        self._actions: dict[str, Action] = {
            "orders": self._add_order,
            "orders/command": self._command,
            "deploy": self._deploy,
            "plan/submit": self._plan_submit,
            "plan/cancel": self._plan_cancel,
        }

    def routes(self) -> list[web.RouteDef]:
        get = web.get
        return [
            get("/", self.home),
            get("/login", self.login_page),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
            get("/orders", self.orders_page),
            get("/orders/table", self.orders_table),
            get("/api/orders", self.orders_json),
            get("/order", self.order_page),
            get("/api/order", self.order_json),
            get("/api/order/log", self.order_log_text),
            get("/live/changes", self.live_changes),
            get("/live/order", self.live_order),
            get("/live/log", self.live_log),
            get("/workflows", self.workflows_page),
            get("/api/workflows", self.workflows_json),
            get("/workflow", self.workflow_page),
            get("/api/workflow", self.workflow_json),
            get("/plan", self.plan_page),
            get("/plan/orders", self.plan_orders),
            get("/api/plan", self.plan_json),
            get("/api/plan/orders", self.plan_orders_json),
            get("/clusters", self.clusters_page),
            get("/clusters/body", self.clusters_body),
            get("/api/clusters", self.clusters_json),
            get("/api/whoami", self.whoami),
            *(web.post(f"/api/{name}", self._action_handler(name)) for name in self._actions),
        ]

    # ---- login

    async def home(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/orders")

    async def login_page(self, request: web.Request) -> web.Response:
        return self.view.page(
            request, "login.html", {"why": request.query.get("why", ""), "next": _next(request)}
        )

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        target = _next(request, str(form.get("next", "")))
        context = access.WebContext(token, None, request.remote or "")
        try:
            if not token:
                raise access.NeedsLogin("give a token")
            await self.joc.authenticator.caller(context.grpc)
        except (access.NeedsLogin, OstinatoError) as e:
            why = e.message if isinstance(e, OstinatoError) else str(e)
            return self.view.page(request, "login.html", {"why": why, "next": target}, 401)
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            access.TOKEN_COOKIE,
            token,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=not self.view.plain_text,
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(access.TOKEN_COOKIE, path="/")
        return response

    async def whoami(self, request: web.Request) -> web.Response:
        who = _who(request)
        answer = await self.services.accounts.GetCaller(joc_pb2.GetCallerRequest(), who.context.grpc)
        return web.json_response({**to_json(answer), "via": who.via})

    # ---- orders

    def _order_filter(self, request: web.Request) -> tuple[OrderFilter, int, int, dict[str, Any]]:
        q = request.query
        state = q.get("state", "").upper()
        if state and state not in {present.state_class(s).upper() for s in present.STATES}:
            raise InvalidArgument(f"unknown state {q.get('state')!r}", field="state")
        size = _int(q.get("size", ""), 50, "size")
        if size not in present.PAGE_SIZES:
            raise InvalidArgument(f"give one of {', '.join(map(str, present.PAGE_SIZES))}", field="size")
        page = max(1, _int(q.get("page", ""), 1, "page"))
        chosen = OrderFilter(
            state, q.get("workflow", "").strip(), q.get("q", "").strip(), q.get("late") == "1"
        )
        params = {
            "state": state.lower(),
            "workflow": chosen.workflow,
            "q": chosen.text,
            "late": "1" if chosen.late else "",
            "size": size if size != 50 else "",
        }
        return chosen, page, size, params

    async def _orders(self, request: web.Request) -> dict[str, Any]:
        _who(request).caller.require(Permission.VIEW, "list orders")
        chosen, page, size, params = self._order_filter(request)
        now = self.view.clock()
        store = self.joc.store
        found = await asyncio.to_thread(store.page_orders, chosen, (page - 1) * size, size, now)
        started = await asyncio.to_thread(store.started_times, [r.order.id for r in found.rows])
        lines = [present.order_line(r, started.get(r.order.id), now) for r in found.rows]
        counts = [
            (state_word(s), found.counts.get(present.state_class(s).upper(), 0)) for s in present.STATES
        ]
        return {
            "lines": lines,
            "total": found.total,
            "all": sum(found.counts.values()),
            "counts": counts,
            "late": found.late,
            "page": page,
            "pages": present.page_count(found.total, size),
            "size": size,
            "params": params,
            "states": [state_word(s) for s in present.STATES],
        }

    async def orders_page(self, request: web.Request) -> web.Response:
        return self.view.page(request, "orders.html", await self._orders(request))

    async def orders_table(self, request: web.Request) -> web.Response:
        return self.view.fragment(request, "orders_table.html", await self._orders(request))

    async def orders_json(self, request: web.Request) -> web.Response:
        values = await self._orders(request)
        return web.json_response(
            {
                "orders": [_line_json(line) for line in values["lines"]],
                "total": values["total"],
                "page": values["page"],
                "pages": values["pages"],
                "counts": {word: n for word, n in values["counts"] if n},
                "late": values["late"],
            }
        )

    async def live_changes(self, request: web.Request) -> web.StreamResponse:
        _who(request).caller.require(Permission.VIEW, "watch orders")
        return await self.view.events(request, self._changes())

    async def _changes(self) -> AsyncIterator[tuple[str, str]]:
        """ "changed" when orders changed, at most once a CHANGES_INTERVAL, and every TABLE_TICK
        (lateness and ages change without events)."""
        hub = self.joc.hub
        waiter = asyncio.ensure_future(hub.changed())
        try:
            while True:
                await asyncio.wait({waiter}, timeout=TABLE_TICK)
                if waiter.done():
                    waiter = asyncio.ensure_future(hub.changed())
                yield "changed", ""
                await asyncio.sleep(CHANGES_INTERVAL)  # what changes meanwhile wakes the waiter
        finally:
            waiter.cancel()

    # ---- one order

    async def _history(
        self, order_id: str
    ) -> tuple[Any, list[tuple[events_pb2.Event, order_pb2.Order | None]]]:
        """The order's row and each of its events with the order after it (as WatchOrder)."""
        row, events = await asyncio.to_thread(self.joc.store.order_history, order_id)
        pairs = [(e, p.order) for e, p in replay(events, row.projected, row.resynced_at_event)]
        return row, pairs

    async def _workflow(self, path: str, version_id: str) -> workflow_pb2.Workflow | None:
        """The version the order runs on, as deployed (None when JOC does not have it)."""
        cache_key = (path, version_id)
        if cache_key not in self._workflows:
            text = await asyncio.to_thread(self.joc.store.deployed_json, path, WF, version_id)
            workflow = None
            if text is not None:
                with contextlib.suppress(OstinatoError):
                    workflow = parse_workflow(text, path)
            if len(self._workflows) >= WORKFLOW_CACHE:
                self._workflows.clear()
            self._workflows[cache_key] = workflow
        return self._workflows[cache_key]

    async def _detail(
        self, who: access.Who, row: Any, order: order_pb2.Order, pairs: list[tuple[events_pb2.Event, Any]]
    ) -> dict[str, Any]:
        workflow = await self._workflow(order.workflow_path, order.workflow_version_id)
        lines = present.history(pairs)
        ended = order.state in TERMINAL_STATES or row.deleted
        return {
            "order": order,
            "row": row,
            "state": present.shown_state(order, row.deleted),
            "state_class": present.state_class(order.state),
            "position": positions.text(order.position),
            "arguments": present.values(order.arguments),
            "variables": present.values(order.variables),
            "outcomes": [(positions.text(h.position), _outcome(h.outcome)) for h in order.historic_outcomes],
            "marks": [m.WhichOneof("kind") or "" for m in order.marks],
            "graph": graph.layout(workflow) if workflow is not None else None,
            "marked": graph.marks(order),
            "history": lines[-HISTORY_LINES:],
            "history_omitted": max(0, len(lines) - HISTORY_LINES),
            "ended": ended,
            "may_command": who.may(Permission.ORDERS) and not ended,
            "when": present.when,
            "S": S,
        }

    async def order_page(self, request: web.Request) -> web.Response:
        who = _who(request)
        who.caller.require(Permission.VIEW, "see orders")
        order_id = _required(request, "id")
        row, pairs = await self._history(order_id)
        return self.view.page(request, "order.html", await self._detail(who, row, row.order, pairs))

    async def order_json(self, request: web.Request) -> web.Response:
        who = _who(request)
        answer = await self.services.orders.GetOrder(
            joc_pb2.GetOrderRequest(order_id=_required(request, "id")), who.context.grpc
        )
        return web.json_response(to_json(answer))

    async def order_log_text(self, request: web.Request) -> web.Response:
        who = _who(request)
        chunks = [
            r.chunk
            async for r in self.services.orders.GetOrderLog(
                joc_pb2.GetOrderLogRequest(order_id=_required(request, "id")), who.context.grpc
            )
        ]
        return web.Response(text="".join(chunks), content_type="text/plain")

    async def live_order(self, request: web.Request) -> web.StreamResponse:
        who = _who(request)
        order_id = _required(request, "id")
        row = await asyncio.to_thread(self.joc.store.get_order, order_id)
        return await self.view.events(request, self._order_updates(request, who, row))

    def _watch(self, who: access.Who, order_id: str) -> AsyncIterator[joc_pb2.WatchOrderResponse]:
        """WatchOrder's events, also past a failure: WatchOrder ends when the order fails, and a
        failed order may be resumed, so the watch starts again when it moves."""

        async def watch() -> AsyncIterator[joc_pb2.WatchOrderResponse]:
            while True:
                request = joc_pb2.WatchOrderRequest(order_id=order_id)
                async for response in self.services.orders.WatchOrder(request, who.context.grpc):
                    yield response
                if not await self._moves_again(order_id):
                    return

        return watch()

    async def _moves_again(self, order_id: str) -> bool:
        """Waits while the order stays failed; False when it ended for good."""
        async with self.joc.hub.subscribe(order_id) as subscription:
            row = await asyncio.to_thread(self.joc.store.get_order, order_id)  # after subscribing
            if row.deleted or row.order.state != S.ORDER_STATE_FAILED:
                return not row.deleted and row.order.state not in TERMINAL_STATES
            await subscription.get()
            return True

    async def _order_updates(
        self, request: web.Request, who: access.Who, row: Any
    ) -> AsyncIterator[tuple[str, str]]:
        """The order's detail again after each batch of its events, and "end" when it ended for
        good. Events seen before (a watch started again) are skipped by id."""
        queue: asyncio.Queue[joc_pb2.WatchOrderResponse | None] = asyncio.Queue()
        watch = self._watch(who, row.order.id)

        async def pump() -> None:
            try:
                async for response in watch:
                    queue.put_nowait(response)
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(pump())
        pairs: list[tuple[events_pb2.Event, order_pb2.Order | None]] = []
        seen = 0
        order = row.order
        try:
            ended = False
            while not ended:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                for response in batch:
                    if response is None:
                        ended = True
                        break
                    order = response.order if response.HasField("order") else order
                    if response.event.id and response.event.id <= seen:
                        continue
                    seen = max(seen, response.event.id)
                    pairs.append((response.event, order))
                if ended and task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                values = await self._detail(who, row, order, pairs)
                yield "detail", self.view.render(request, "order_detail.html", values)
            yield "end", ""
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def live_log(self, request: web.Request) -> web.StreamResponse:
        who = _who(request)
        order_id = _required(request, "id")
        return await self.view.events(request, self._log_events(who, order_id))

    async def _log_events(self, who: access.Who, order_id: str) -> AsyncIterator[tuple[str, str]]:
        """ "reset" (the log comes from its start, also after a reconnect), the chunks (each
        {"err": stderr?, "text": ...}), and "end" once the order ended for good; a failed
        order's log starts again when it is resumed."""
        while True:
            yield "reset", ""
            request = joc_pb2.GetOrderLogRequest(order_id=order_id, follow=True)
            async for chunk in self.services.orders.GetOrderLog(request, who.context.grpc):
                err = chunk.stream == events_pb2.STD_STREAM_STDERR
                yield "chunk", json_of({"err": err, "text": chunk.chunk})
            yield "paused", ""
            if not await self._moves_again(order_id):
                break
        yield "end", ""

    # ---- actions

    def _action_handler(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            who = _who(request)
            form = request.content_type != "application/json"
            params: dict[str, Any] = dict(await request.post()) if form else await request.json()
            if not isinstance(params, dict):
                raise InvalidArgument("give a JSON object")
            back = str(params.get("back", "")) or request.headers.get("Referer", "/")
            back = "/" + back.split("/", 3)[-1] if back.startswith("http") else back
            try:
                message, answer = await self._actions[name](who, params)
            except OstinatoError as e:
                if not form:
                    raise
                return self.view.back(request, back, False, str(e))
            if not form:
                return web.json_response({"message": message, **to_json(answer)})
            return self.view.back(request, back, True, message)

        return handle

    async def _add_order(self, who: access.Who, params: dict[str, Any]) -> tuple[str, Message]:
        arguments = params.get("arguments", {})
        request = joc_pb2.AddOrderRequest(
            workflow_path=str(params.get("workflow_path") or params.get("workflowPath") or ""),
            order_id=str(params.get("order_id") or params.get("orderId") or ""),
        )
        if isinstance(arguments, str):  # the form's NAME=VALUE lines
            for name, value in present.parse_arguments(arguments).items():
                request.arguments[name].CopyFrom(value)
        elif isinstance(arguments, dict):
            json_format.ParseDict({"arguments": arguments}, request, ignore_unknown_fields=False)
        answer = await self.services.orders.AddOrder(request, who.context.grpc)
        said = "was known already" if answer.existed else "added"
        return f"order {answer.order_id} {said}", answer

    async def _command(self, who: access.Who, params: dict[str, Any]) -> tuple[str, Message]:
        ids = params.get("orderIds") or [params.get("order_id", "")]
        what = str(params.get("command", ""))
        kill = params.get("kill") in (True, "1", "on", "true")
        commands = []
        for order_id in ids:
            command = commands_pb2.OrderCommand(order_id=str(order_id))
            if what == "cancel":
                command.cancel.kill = kill
            elif what == "suspend":
                command.suspend.kill = kill
            elif what == "resume":
                command.resume.SetInParent()
                if params.get("position"):
                    try:
                        command.resume.position.CopyFrom(positions.parse_text(str(params["position"])))
                    except ValueError:
                        raise InvalidArgument(
                            f"{params['position']!r} is not a position like 2 or 1/try+0:3", field="position"
                        ) from None
            elif what == "answer":
                command.answer_prompt.SetInParent()
            else:
                raise InvalidArgument("give cancel, suspend, resume or answer", field="command")
            commands.append(command)
        answer = await self.services.orders.CommandOrders(
            joc_pb2.CommandOrdersRequest(commands=commands), who.context.grpc
        )
        refused = [f"{r.order_id}: {r.error}" for r in answer.results if r.error]
        if refused:
            raise FailedPrecondition("; ".join(refused))
        return f"{what}: accepted for {', '.join(r.order_id for r in answer.results)}", answer

    async def _deploy(self, who: access.Who, params: dict[str, Any]) -> tuple[str, Message]:
        paths = params.get("paths") or [params.get("path", "")]
        answer = await self.services.deployment.Deploy(
            joc_pb2.DeployRequest(paths=[str(p) for p in paths]), who.context.grpc
        )
        deployed = sum(d.status == joc_pb2.DEPLOYMENT_STATUS_DEPLOYED for d in answer.deployments)
        pending = sum(d.pending for d in answer.deployments)
        text = f"deployed {deployed} of {len(answer.deployments)}"
        return text + (f", {pending} pending" if pending else ""), answer

    async def _plan_submit(self, who: access.Who, params: dict[str, Any]) -> tuple[str, Message]:
        day = str(params.get("date", ""))
        answer = await self.services.plan.SubmitPlan(
            joc_pb2.SubmitPlanRequest(from_date=day, to_date=day), who.context.grpc
        )
        return _dates_said("submitted", answer.dates, day), answer

    async def _plan_cancel(self, who: access.Who, params: dict[str, Any]) -> tuple[str, Message]:
        day = str(params.get("date", ""))
        kill = params.get("kill") in (True, "1", "on", "true")
        answer = await self.services.plan.CancelPlan(
            joc_pb2.CancelPlanRequest(from_date=day, to_date=day, kill=kill), who.context.grpc
        )
        return _dates_said("cancelled", answer.dates, day), answer

    # ---- workflows

    async def _objects(self, who: access.Who) -> list[joc_pb2.InventoryObject]:
        answer = await self.services.inventory.ListObjects(
            joc_pb2.ListObjectsRequest(folder="/", recursive=True), who.context.grpc
        )
        return list(answer.objects)

    async def workflows_page(self, request: web.Request) -> web.Response:
        who = _who(request)
        folder = request.query.get("folder", "/").rstrip("/") or "/"
        objects = await self._objects(who)
        return self.view.page(
            request,
            "workflows.html",
            {
                "folder": folder,
                "folders": present.folders(o.path for o in objects),
                "objects": [o for o in objects if present.in_folder(o.path, folder)],
                "type_word": type_text,
                "when": present.when,
                "WF": WF,
            },
        )

    async def workflows_json(self, request: web.Request) -> web.Response:
        objects = await self._objects(_who(request))
        return web.json_response(
            {"objects": [{k: v for k, v in to_json(o).items() if k != "json"} for o in objects]}
        )

    async def _workflow_values(self, request: web.Request) -> dict[str, Any]:
        who = _who(request)
        path = _required(request, "path")
        version = request.query.get("version", "")
        try:
            draft: joc_pb2.InventoryObject | None = (
                await self.services.inventory.GetObject(
                    joc_pb2.GetObjectRequest(path=path, type=WF), who.context.grpc
                )
            ).object
        except NotFound:
            if not version:
                raise
            draft = None  # removed from the inventory; its versions remain
        history = await self.services.deployment.ListDeployments(
            joc_pb2.ListDeploymentsRequest(path=path, limit=200), who.context.grpc
        )
        rows = await asyncio.to_thread(self.joc.store.list_deployments, path, 200)
        current = present.current_versions(rows)
        if version:
            workflow = await self._workflow(path, version)
            if workflow is None:
                raise NotFound(f"no version {version} of {path} was deployed by JOC", field="version")
        else:
            assert draft is not None
            workflow = parse_workflow(draft.json, path)
        return {
            "path": path,
            "draft": json.dumps(json.loads(draft.json), indent=2, ensure_ascii=False) if draft else "",
            "deployments": list(history.deployments),
            "current": current,
            "version": version,
            "workflow": workflow,
            "graph": graph.layout(workflow),
            "marked": {},
            "parameters": sorted(workflow.order_preparation.parameters),
            "when": present.when,
        }

    async def workflow_page(self, request: web.Request) -> web.Response:
        return self.view.page(request, "workflow.html", await self._workflow_values(request))

    async def workflow_json(self, request: web.Request) -> web.Response:
        values = await self._workflow_values(request)
        return web.json_response(
            {
                "path": values["path"],
                "workflow": to_json(values["workflow"]),
                "versions": {c: r.version_id for c, r in values["current"].items()},
                "deployments": [to_json(d) for d in values["deployments"]],
            }
        )

    # ---- daily plan

    async def _month(self, request: web.Request) -> dict[str, Any]:
        who = _who(request)
        today = self.joc.plan.today(self.view.clock())
        year, month = present.parse_month(request.query.get("month", ""), today)
        answer = await self.services.plan.PlanProjections(
            joc_pb2.PlanProjectionsRequest(month=f"{year:04d}-{month:02d}"), who.context.grpc
        )
        return {"year": year, "month": month, "today": today, "projections": answer}

    async def _date(self, request: web.Request, day: date) -> dict[str, Any]:
        who = _who(request)
        text = day.isoformat()
        answer = await self.services.plan.ListPlannedOrders(
            joc_pb2.ListPlannedOrdersRequest(from_date=text, to_date=text), who.context.grpc
        )
        return {
            "day": day,
            "planned": list(answer.orders),
            "plan_counts": present.plan_counts(answer.orders),
            "state_words": present.PLAN_STATE_WORDS,
            "when": present.when,
        }

    def _day(self, request: web.Request) -> date:
        text = request.query.get("date", "")
        if not text:
            return self.joc.plan.today(self.view.clock())
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(f"{text!r} is not a date YYYY-MM-DD", field="date") from None

    async def plan_page(self, request: web.Request) -> web.Response:
        month = await self._month(request)
        day = self._day(request)
        if "month" in request.query and "date" not in request.query:
            day = date(month["year"], month["month"], 1) if day.month != month["month"] else day
        values = {**month, **await self._date(request, day)}
        counts = present.projection_counts(month["projections"])
        values["weeks"] = present.month_grid(month["year"], month["month"], counts, month["today"])
        values["previous"] = present.shift_month(month["year"], month["month"], -1)
        values["next"] = present.shift_month(month["year"], month["month"], 1)
        values["month_text"] = f"{date(month['year'], month['month'], 1):%B %Y}"
        values["settings"] = month["projections"].settings
        return self.view.page(request, "plan.html", values)

    async def plan_orders(self, request: web.Request) -> web.Response:
        return self.view.fragment(request, "plan_orders.html", await self._date(request, self._day(request)))

    async def plan_json(self, request: web.Request) -> web.Response:
        return web.json_response(to_json((await self._month(request))["projections"]))

    async def plan_orders_json(self, request: web.Request) -> web.Response:
        values = await self._date(request, self._day(request))
        return web.json_response(
            {"orders": [to_json(o) for o in values["planned"]], "counts": values["plan_counts"]}
        )

    # ---- clusters

    async def _clusters(self, request: web.Request) -> dict[str, Any]:
        who = _who(request)

        async def status(controller_id: str) -> tuple[str, joc_pb2.GetClusterStatusResponse | None, str]:
            try:
                answer = await self.services.cluster.GetClusterStatus(
                    joc_pb2.GetClusterStatusRequest(controller_id=controller_id), who.context.grpc
                )
            except OstinatoError as e:
                return controller_id, None, str(e)
            return controller_id, answer, ""

        who.caller.require(Permission.VIEW, "see clusters")
        found = await asyncio.gather(*(status(c) for c in self.joc.controllers))
        return {
            "controllers": found,
            "instances": await self.view.instances(),
            "role_word": _role_word,
            "when": present.when,
        }

    async def clusters_page(self, request: web.Request) -> web.Response:
        return self.view.page(request, "clusters.html", await self._clusters(request))

    async def clusters_body(self, request: web.Request) -> web.Response:
        return self.view.fragment(request, "clusters_body.html", await self._clusters(request))

    async def clusters_json(self, request: web.Request) -> web.Response:
        values = await self._clusters(request)
        return web.json_response(
            {
                "joc": [
                    {
                        "name": i.name,
                        "address": i.address,
                        "web": i.web,
                        "role": i.role,
                        "since": present.when(i.since),
                        "database": i.database,
                    }
                    for i in values["instances"]
                ],
                "controllers": [
                    {"controllerId": c, **(to_json(a) if a is not None else {"error": error})}
                    for c, a, error in values["controllers"]
                ],
            }
        )


def _who(request: web.Request) -> access.Who:
    who: access.Who = request["who"]
    return who


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name, "")
    if not value:
        raise InvalidArgument(f"give ?{name}=", field=name)
    return value


def _int(text: str, default: int, field: str) -> int:
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a number", field=field) from None


def _next(request: web.Request, given: str = "") -> str:
    target = given or request.query.get("next", "") or "/orders"
    return target if target.startswith("/") and not target.startswith("//") else "/orders"


def _line_json(line: present.OrderLine) -> dict[str, Any]:
    return {
        "orderId": line.id,
        "state": line.state,
        "workflowPath": line.workflow,
        "workflowVersionId": line.version,
        "position": line.position,
        "scheduledFor": line.scheduled,
        "startedAt": line.started,
        "updatedAt": line.updated,
        "late": line.late,
        "controllerId": line.controller,
    }


def _outcome(outcome: workflow_pb2.Outcome) -> tuple[str, str]:
    """(CSS class, text) of an outcome."""
    return graph.outcome_word(outcome), outcome_text(outcome)


def _role_word(role: int) -> str:
    word = cluster_pb2.NodeRole.Name(role).removeprefix("NODE_ROLE_").lower()  # type: ignore[arg-type]
    return "unknown" if word == "unspecified" else word


def _dates_said(verb: str, dates: Any, day: str) -> str:
    total = sum(d.count for d in dates)
    errors = [f"{d.plan_date}: {d.error}" for d in dates if d.error]
    text = f"{verb} {total} orders of {', '.join(d.plan_date for d in dates) or day}"
    return text + (f" ({'; '.join(errors)})" if errors else "")
