"""JOC's rows as the messages of its API."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime

from google.protobuf import timestamp_pb2

from gen.ostinato.common.v1 import events_pb2
from gen.ostinato.joc.v1 import joc_pb2
from joc_svc.auth import AccountRow
from joc_svc.dailyplan import Change, ChangeKind, DateResult, PlanSettings
from joc_svc.projection import Projected
from joc_svc.store import AuditRow, DeploymentRow, LogRow, ObjectRow, OrderRow
from joc_svc.store.plan import PlanRow, PlanState
from ostinato import signing
from ostinato.dailyplan import IANA_VERSION, PlannedStart


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def object_pb(row: ObjectRow) -> joc_pb2.InventoryObject:
    result = joc_pb2.InventoryObject(
        path=row.path,
        type=row.type,  # type: ignore[arg-type]
        json=row.json,
        modified_at=timestamp(row.modified_at),
        deployed_version_id=row.deployed_version_id,
    )
    if row.released_at:
        result.released_at.CopyFrom(timestamp(row.released_at))
    return result


def deployment_pb(row: DeploymentRow) -> joc_pb2.Deployment:
    result = joc_pb2.Deployment(
        id=row.id,
        path=row.path,
        type=row.type,  # type: ignore[arg-type]
        version_id=row.version_id,
        controller_id=row.controller_id,
        status=row.status,  # type: ignore[arg-type]
        message=row.message,
        account=row.account,
        requested_at=timestamp(row.requested_at),
        pending=row.pending,
        signer=row.signer,
        attempts=row.attempts,
        agent_confirmations=[
            joc_pb2.AgentConfirmation(agent=agent, attached_at=timestamp(at)) for agent, at in row.agents
        ],
    )
    if row.confirmed_at:
        result.confirmed_at.CopyFrom(timestamp(row.confirmed_at))
    return result


def audit_pb(row: AuditRow) -> joc_pb2.AuditEntry:
    return joc_pb2.AuditEntry(
        id=row.id,
        account=row.account,
        action=row.action,
        object=row.object,
        reason=row.reason,
        at=timestamp(row.at),
    )


def account_pb(row: AccountRow) -> joc_pb2.Account:
    subject = ""
    if row.signing_certificate:
        subject = signing.subject_text(signing.load_certificates(row.signing_certificate)[0])
    return joc_pb2.Account(
        name=row.name,
        roles=row.roles,  # type: ignore[arg-type]
        created_at=timestamp(row.created_at),
        signing_certificate_subject=subject,
        token_count=row.token_count,
        cert_subject=row.cert_subject or "",
    )


def summary_pb(row: OrderRow) -> joc_pb2.OrderSummary:
    return joc_pb2.OrderSummary(
        order=row.order,
        controller_id=row.controller_id,
        added_at=timestamp(row.added_at),
        updated_at=timestamp(row.updated_at),
        resynced_at_event_id=row.resynced_at_event,
        left_unseen=row.left_unseen_state is not None,
        last_seen_state=row.left_unseen_state or 0,  # type: ignore[arg-type]
    )


def watch_pb(event: events_pb2.Event, projected: Projected) -> joc_pb2.WatchOrderResponse:
    response = joc_pb2.WatchOrderResponse(event=event)
    if projected.order is not None:
        response.order.CopyFrom(projected.order)
    return response


def log_pb(row: LogRow) -> joc_pb2.GetOrderLogResponse:
    return joc_pb2.GetOrderLogResponse(stream=row.stream, chunk=row.chunk, timestamp=timestamp(row.timestamp))  # type: ignore[arg-type]


# ---- the daily plan

_PLAN_STATES = {
    PlanState.PLANNED: joc_pb2.PLANNED_ORDER_STATE_PLANNED,
    PlanState.SUBMITTED: joc_pb2.PLANNED_ORDER_STATE_SUBMITTED,
    PlanState.FINISHED: joc_pb2.PLANNED_ORDER_STATE_FINISHED,
    PlanState.FAILED: joc_pb2.PLANNED_ORDER_STATE_FAILED,
    PlanState.CANCELLED: joc_pb2.PLANNED_ORDER_STATE_CANCELLED,
}
PLAN_STATES_BY_PB = {v: k for k, v in _PLAN_STATES.items()}


def plan_settings_pb(settings: PlanSettings, controller_id: str) -> joc_pb2.PlanSettings:
    return joc_pb2.PlanSettings(
        time_zone=settings.time_zone,
        period_begin=settings.period_begin,
        days_ahead_plan=settings.days_ahead_plan,
        days_ahead_submit=settings.days_ahead_submit,
        catch_up_seconds=settings.catch_up_seconds,
        enabled=settings.enabled,
        tz_version=IANA_VERSION,
        controller_id=controller_id,
    )


def planned_start_pb(start: PlannedStart | PlanRow) -> joc_pb2.PlannedStart:
    return joc_pb2.PlannedStart(
        plan_date=start.plan_date.isoformat(),
        scheduled_for=timestamp(start.scheduled_for),
        order_id=start.order_id,
        workflow_path=start.workflow_path,
        order_name=start.order_name,
        schedule_path=start.schedule_path,
    )


def planned_order_pb(row: PlanRow) -> joc_pb2.PlannedOrder:
    result = joc_pb2.PlannedOrder(
        order_id=row.order_id,
        plan_date=row.plan_date.isoformat(),
        schedule_path=row.schedule_path,
        workflow_path=row.workflow_path,
        order_name=row.order_name,
        scheduled_for=timestamp(row.scheduled_for),
        controller_id=row.controller_id,
        state=_PLAN_STATES[row.state],
        late=row.late,
        missed=row.missed,
        workflow_version_id=row.workflow_version_id,
        message=row.message,
        submission=row.submission,
        tz_version=row.tz_version,
    )
    if row.submitted_at is not None:
        result.submitted_at.CopyFrom(timestamp(row.submitted_at))
    return result


def date_counts_pb(results: Mapping[date, DateResult]) -> list[joc_pb2.PlanDateCount]:
    return [
        joc_pb2.PlanDateCount(plan_date=day.isoformat(), count=r.count, error=r.error)
        for day, r in sorted(results.items())
    ]


def plan_change_pb(change: Change) -> joc_pb2.PlanChange:
    kind = (
        joc_pb2.PLAN_CHANGE_KIND_ADDED
        if change.kind is ChangeKind.ADDED
        else joc_pb2.PLAN_CHANGE_KIND_REMOVED
    )
    return joc_pb2.PlanChange(kind=kind, start=planned_start_pb(change.row))
