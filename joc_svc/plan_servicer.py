"""JOC's DailyPlanService: previews and explanations computed by the pure planner from drafts or
released objects, the planned orders, and the requests that change the plan (joc_svc.dailyplan)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import date, timedelta

import grpc

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from joc_svc import convert, naming
from joc_svc.dailyplan import DailyPlan, DateResult, Released, date_range, parse_date, parse_released
from joc_svc.servicers import Joc
from joc_svc.store.plan import PlanRow
from ostinato.dailyplan import PlannedStart, explain, projections
from ostinato.dailyplan.planner import Planner
from ostinato.errors import InvalidArgument, NotFound

# A preview, calendar listing or projection covers at most this many days.
MAX_DAYS = 3660
NEXT_LIMIT = 10_000
LIST_LIMIT = 10_000
T = items_pb2


class DailyPlanServicer(joc_pb2_grpc.DailyPlanServiceServicer):
    def __init__(self, joc: Joc) -> None:
        self.joc = joc
        self.plan: DailyPlan = joc.plan

    async def GetPlanSettings(
        self, request: joc_pb2.GetPlanSettingsRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.GetPlanSettingsResponse:
        return joc_pb2.GetPlanSettingsResponse(settings=self._settings())

    async def CalendarDates(
        self, request: joc_pb2.CalendarDatesRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.CalendarDatesResponse:
        path = naming.check_path(request.calendar_path, "calendar_path")
        first, last = date_range(request.from_date, request.to_date, MAX_DAYS)
        objects = await self._objects(request.released)
        calendar = objects.calendars.get(path)
        if calendar is None:
            raise NotFound(_missing("calendar", path, request.released, objects), field="calendar_path")
        return joc_pb2.CalendarDatesResponse(dates=[d.isoformat() for d in calendar.dates(first, last)])

    async def PreviewPlan(
        self, request: joc_pb2.PreviewPlanRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.PreviewPlanResponse:
        path = naming.check_path(request.schedule_path, "schedule_path")
        objects = await self._objects(request.released)
        schedule = objects.schedules.get(path)
        if schedule is None:
            raise NotFound(_missing("schedule", path, request.released, objects), field="schedule_path")
        now = self.plan.clock()
        if request.next < 0 or request.next > NEXT_LIMIT:
            raise InvalidArgument(f"give 1 .. {NEXT_LIMIT}", field="next")
        if request.next:
            if request.from_date or request.to_date:
                raise InvalidArgument("give next, or from_date and to_date, not both", field="next")
            first = self.plan.today(now)
            starts: list[PlannedStart] = []
            for chunk in range(12):  # up to a year ahead, a month at a time
                low = first + timedelta(days=31 * chunk)
                high = low + timedelta(days=30)
                found = await self._starts(objects, path, low, high)
                starts += [s for s in found if s.scheduled_for >= now]
                if len(starts) >= request.next:
                    break
            starts = starts[: request.next]
        else:
            first, last = date_range(request.from_date, request.to_date, MAX_DAYS)
            starts = await self._starts(objects, path, first, last)
        return joc_pb2.PreviewPlanResponse(
            starts=[convert.planned_start_pb(s) for s in starts], settings=self._settings()
        )

    async def ExplainPlan(
        self, request: joc_pb2.ExplainPlanRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ExplainPlanResponse:
        path = naming.check_path(request.schedule_path, "schedule_path")
        day = parse_date(request.date, "date")
        objects = await self._objects(request.released)
        schedule = objects.schedules.get(path)
        if schedule is None:
            raise NotFound(_missing("schedule", path, request.released, objects), field="schedule_path")
        numbers = await self._numbers(path, day, day)
        found = await asyncio.to_thread(
            explain,
            path,
            schedule,
            objects.calendars,
            self.plan.settings.core,
            day,
            controller_id=self.plan.controller_id,
            submissions=numbers,
        )
        return joc_pb2.ExplainPlanResponse(
            reasons=[joc_pb2.PlanReason(code=r.code.value, message=r.message) for r in found.reasons],
            starts=[convert.planned_start_pb(s) for s in found.starts],
            settings=self._settings(),
        )

    async def ListPlannedOrders(
        self, request: joc_pb2.ListPlannedOrdersRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.ListPlannedOrdersResponse:
        first = parse_date(request.from_date, "from_date") if request.from_date else None
        last = parse_date(request.to_date, "to_date") if request.to_date else first
        state = convert.PLAN_STATES_BY_PB.get(request.state) if request.state else None
        if request.state and state is None:
            raise InvalidArgument("not a planned order state", field="state")
        limit = request.limit or LIST_LIMIT
        # States and lateness are known only with the orders projection: filtered here.
        filtered = state is not None or request.late_only
        rows = await asyncio.to_thread(
            self.joc.store.list_plan,
            first,
            last,
            request.schedule_path,
            request.workflow_path,
            self.plan.clock(),
            None if filtered else limit,
        )
        chosen: list[PlanRow] = [
            r for r in rows if (state is None or r.state is state) and (r.late or not request.late_only)
        ]
        return joc_pb2.ListPlannedOrdersResponse(orders=[convert.planned_order_pb(r) for r in chosen[:limit]])

    async def GeneratePlan(
        self, request: joc_pb2.GeneratePlanRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.GeneratePlanResponse:
        first, last = date_range(request.from_date, request.to_date)
        results = await self.plan.generate(first, last, request.schedule_path)
        await self._audit("generate plan", first, last, request.schedule_path, results)
        return joc_pb2.GeneratePlanResponse(dates=convert.date_counts_pb(results))

    async def SubmitPlan(
        self, request: joc_pb2.SubmitPlanRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.SubmitPlanResponse:
        first, last = date_range(request.from_date, request.to_date)
        results = await self.plan.submit(first, last, request.schedule_path)
        await self._audit("submit plan", first, last, request.schedule_path, results)
        return joc_pb2.SubmitPlanResponse(dates=convert.date_counts_pb(results))

    async def CancelPlan(
        self, request: joc_pb2.CancelPlanRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.CancelPlanResponse:
        first, last = date_range(request.from_date, request.to_date)
        results = await self.plan.cancel(first, last, request.schedule_path, request.kill)
        action = "cancel plan (kill)" if request.kill else "cancel plan"
        await self._audit(action, first, last, request.schedule_path, results)
        return joc_pb2.CancelPlanResponse(dates=convert.date_counts_pb(results))

    async def DeletePlan(
        self, request: joc_pb2.DeletePlanRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.DeletePlanResponse:
        first, last = date_range(request.from_date, request.to_date)
        results = await self.plan.delete(first, last, request.schedule_path)
        await self._audit("delete plan", first, last, request.schedule_path, results)
        return joc_pb2.DeletePlanResponse(dates=convert.date_counts_pb(results))

    async def PlanProjections(
        self, request: joc_pb2.PlanProjectionsRequest, context: grpc.aio.ServicerContext
    ) -> joc_pb2.PlanProjectionsResponse:
        try:
            year, month = (int(part) for part in request.month.split("-"))
            first = date(year, month, 1)
        except ValueError:
            raise InvalidArgument(f"{request.month!r} is not a month YYYY-MM", field="month") from None
        months = request.months or 1
        if not 1 <= months <= 24:
            raise InvalidArgument("give 1 .. 24", field="months")
        released = await self.plan.released()
        counts: dict[str, dict[date, int]] = {path: {} for path in released.schedules}
        y, m = year, month
        for _ in range(months):
            found = await asyncio.to_thread(
                projections, released.schedules, released.calendars, self.plan.settings.core, y, m
            )
            for path, per_date in found.items():
                counts[path].update(per_date)
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        last = date(y, m, 1) - timedelta(days=1)
        return joc_pb2.PlanProjectionsResponse(
            from_date=first.isoformat(),
            to_date=last.isoformat(),
            schedules=[
                joc_pb2.ScheduleProjection(
                    schedule_path=path,
                    dates=convert.date_counts_pb({d: DateResult(n) for d, n in per_date.items()}),
                )
                for path, per_date in sorted(counts.items())
            ],
            settings=self._settings(),
        )

    # ---- helpers

    def _settings(self) -> joc_pb2.PlanSettings:
        return convert.plan_settings_pb(self.plan.settings, self.plan.controller_id)

    async def _objects(self, released: bool) -> Released:
        if released:
            return await self.plan.released()
        store = self.joc.store
        calendars = await asyncio.to_thread(store.list_objects, "/", True, T.ITEM_TYPE_CALENDAR)
        schedules = await asyncio.to_thread(store.list_objects, "/", True, T.ITEM_TYPE_SCHEDULE)
        return parse_released({o.path: o.json for o in calendars}, {o.path: o.json for o in schedules})

    async def _numbers(self, path: str, first: date, last: date) -> Mapping[date, int]:
        records = await asyncio.to_thread(
            self.joc.store.plan_records, self.plan.controller_id, first, last, path
        )
        return {day: r.number for (day, _), r in records.items()}

    async def _starts(self, objects: Released, path: str, first: date, last: date) -> list[PlannedStart]:
        numbers = await self._numbers(path, first, last)
        planner = Planner(objects.calendars, self.plan.settings.core, self.plan.controller_id, numbers)
        schedule = objects.schedules[path]
        starts = await asyncio.to_thread(planner.starts, path, schedule, first, last)
        return sorted(starts, key=lambda s: (s.scheduled_for, s.order_id))

    async def _audit(
        self, action: str, first: date, last: date, schedule_path: str, results: Mapping[date, DateResult]
    ) -> None:
        total = sum(r.count for r in results.values())
        what = f"{first}..{last}" + (f" {schedule_path}" if schedule_path else "")
        await self.joc.audit(action, f"{what}: {total} orders")


def _missing(what: str, path: str, released: bool, objects: Released) -> str:
    why = objects.problems.get(path)
    if why:
        return f"{what} {path} is not valid: {why}"
    return f"no {what} {path} " + ("released" if released else "in the inventory")
