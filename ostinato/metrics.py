"""Prometheus metrics of every service: one registry per process, served on `--metrics-listen`.

Every metric is defined here, once (README "Metrics" lists them). Each service serves the groups
that concern it (`GROUPS`); metrics of other groups may still be updated in its process, costing
a lock and an addition, but are never exposed there. Metrics about orders come from the shells
watching committed events (`NodeMetrics`), never from inside the cores.

The daily plan (JOC) reports through `daily_plan_orders(state, count)`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from gen.ostinato.common.v1 import events_pb2, order_pb2, workflow_pb2
from ostinato import tls
from ostinato.workflow.positions import instruction_at

S = order_pb2.OrderState

# The process's registry: what /metrics serves.
REGISTRY = CollectorRegistry(auto_describe=True)

# Jobs run from milliseconds to hours.
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, float("inf"))
# Journal commits and RPCs: replication batches every few milliseconds.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))

# --- controller and director nodes (and witnesses: role and term) ---
ORDERS = Gauge("ostinato_orders", "Orders the active node holds, by state", ["state"], registry=None)
ORDER_TRANSITIONS = Counter(
    "ostinato_order_transitions",
    "Committed order events, by kind (order_added, order_processing_started, order_finished, ...)",
    ["event"],
    registry=None,
)
JOB_DURATION = Histogram(
    "ostinato_job_duration_seconds",
    # job_name, not job: Prometheus gives every scraped series a "job" label of its own.
    "Job executions from processing started to processed, by workflow, job and outcome",
    ["workflow", "job_name", "outcome"],
    buckets=JOB_BUCKETS,
    registry=None,
)
JOURNAL_COMMIT = Histogram(
    "ostinato_journal_commit_seconds",
    "From submitting a batch of events to the journal until it is committed (replicated)",
    buckets=FAST_BUCKETS,
    registry=None,
)
EVENTS_UNRELEASED = Gauge(
    "ostinato_events_unreleased", "Events kept until the receiver releases them", registry=None
)
OUTPUT_HELD = Gauge(
    "ostinato_output_held_bytes", "Bytes of job output kept until the receiver releases them", registry=None
)
CLUSTER_ROLE = Gauge(
    "ostinato_cluster_role",
    "1 for this node's role (active, passive, witness), 0 for the others",
    ["role"],
    registry=None,
)
CLUSTER_TERM = Gauge("ostinato_cluster_term", "The Raft term this node knows", registry=None)
LEADER_CHANGES = Counter(
    "ostinato_cluster_leader_changes", "Times this node saw the active node change", registry=None
)
# --- director ---
SUBAGENT_CONNECTED = Gauge(
    "ostinato_subagent_connected",
    "1 while the director has a session with the subagent",
    ["subagent"],
    registry=None,
)
SUBAGENT_CONNECTS = Counter(
    "ostinato_subagent_connects",
    "Sessions the director opened with the subagent",
    ["subagent"],
    registry=None,
)
# --- subagent ---
PROCESSES_RUNNING = Gauge(
    "ostinato_processes_running", "Job processes running on this subagent", registry=None
)
PROCESSES_STARTED = Counter(
    "ostinato_processes_started", "Job processes this subagent started", registry=None
)
DIRECTOR_SESSIONS = Gauge(
    "ostinato_director_sessions", "Director sessions open on this subagent", registry=None
)
# --- JOC ---
DEPLOYMENTS = Counter(
    "ostinato_deployments",
    "Objects delivered to a controller, by controller and result (deployed, refused)",
    ["controller", "status"],
    registry=None,
)
DAILY_PLAN_STATES = ("planned", "submitted", "late", "missed")
DAILY_PLAN_ORDERS = Counter(
    "ostinato_dailyplan_orders",
    "Daily-plan orders: planned, submitted to a controller, submitted late, missed",
    ["state"],
    registry=None,
)
# --- every service ---
GRPC_REQUESTS = Counter(
    "ostinato_grpc_requests",
    "gRPC calls served, by method and status code",
    ["method", "code"],
    registry=None,
)
GRPC_LATENCY = Histogram(
    "ostinato_grpc_request_seconds",
    "Time to serve a gRPC call (streams: their whole life), by method",
    ["method"],
    buckets=FAST_BUCKETS,
    registry=None,
)

_EVERY = (GRPC_REQUESTS, GRPC_LATENCY)
_NODE = (
    ORDERS,
    ORDER_TRANSITIONS,
    JOB_DURATION,
    JOURNAL_COMMIT,
    EVENTS_UNRELEASED,
    OUTPUT_HELD,
    CLUSTER_ROLE,
    CLUSTER_TERM,
    LEADER_CHANGES,
)
GROUPS: dict[str, tuple[MetricWrapperBase, ...]] = {
    "joc": (*_EVERY, DEPLOYMENTS, DAILY_PLAN_ORDERS),
    "controller": (*_EVERY, *_NODE),
    "director": (*_EVERY, *_NODE, SUBAGENT_CONNECTED, SUBAGENT_CONNECTS),
    "subagent": (*_EVERY, PROCESSES_RUNNING, PROCESSES_STARTED, DIRECTOR_SESSIONS),
}

_serving = False


def daily_plan_orders(state: str, count: int = 1) -> None:
    """The daily plan's counts: `state` is one of DAILY_PLAN_STATES."""
    if state not in DAILY_PLAN_STATES:
        raise ValueError(f"daily plan state must be one of {DAILY_PLAN_STATES}, not {state!r}")
    DAILY_PLAN_ORDERS.labels(state).inc(count)


def state_label(state: int) -> str:
    return S.Name(S.ValueType(state)).removeprefix("ORDER_STATE_").lower()


def outcome_label(outcome: workflow_pb2.Outcome) -> str:
    kind = outcome.kind or workflow_pb2.OUTCOME_KIND_SUCCEEDED
    return workflow_pb2.OutcomeKind.Name(kind).removeprefix("OUTCOME_KIND_").lower()


@dataclass(frozen=True)
class Endpoint:
    url: str  # http(s)://HOST:PORT/metrics
    stop: Callable[[], None]


def serve(service: str, listen: str, security: tls.Security) -> Endpoint:
    """Serves the service's metrics on `listen` (HOST:PORT, port 0: any): https with the service's
    certificate, asking for a client certificate of its CA (as every port of ostinato does), or
    plain http when the service runs --insecure."""
    from prometheus_client import start_http_server
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector

    global _serving
    if not _serving:  # once per process: a registry takes each collector once
        for metric in GROUPS[service]:
            REGISTRY.register(metric)
        ProcessCollector(registry=REGISTRY)
        PlatformCollector(registry=REGISTRY)
        GCCollector(registry=REGISTRY)
    host, _, port = listen.rpartition(":")
    if security.insecure:
        server, thread = start_http_server(int(port), host, REGISTRY)
        scheme = "http"
    else:
        server, thread = start_http_server(
            int(port),
            host,
            REGISTRY,
            certfile=str(security.cert),
            keyfile=str(security.key),
            client_cafile=str(security.ca),
            client_auth_required=True,
            protocol=ssl.PROTOCOL_TLS_SERVER,
        )
        scheme = "https"
    _serving = True
    bound = server.server_address[1]

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return Endpoint(f"{scheme}://{_url_host(host)}:{bound}/metrics", stop)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# --- gRPC calls ---


def serving() -> bool:
    """Whether this process serves metrics (then ostinato.rpc counts and times every call)."""
    return _serving


def call_ended(
    method: str, started: float, context: grpc.aio.ServicerContext, error: BaseException | None
) -> None:
    """A call of `method` (package.Service/Method) that began at perf_counter() `started` ended,
    with `error` or None; the status is the one an abort set, else OK or how it broke off."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        name = code.name
    elif error is None:
        name = "OK"
    else:
        name = "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"
    GRPC_LATENCY.labels(f"/{method}").observe(time.perf_counter() - started)
    GRPC_REQUESTS.labels(f"/{method}", name).inc()


# --- controller and director nodes: what their shells see committed ---


class NodeMetrics:
    """Order metrics of a journaled node from its committed events. While active it counts the
    orders of its working state by state (kept in step event by event, no scans); a passive node
    holds none, so that sums over a cluster's nodes count each order once."""

    def __init__(self) -> None:
        self._states: dict[str, int] = {}
        self._counts: dict[int, int] = {}
        # Order id -> when its job started (ms) and the job's labels, until it is processed.
        self._jobs: dict[str, tuple[int, str, str]] = {}

    def role(self, role: str, term: int) -> None:
        for name in ("active", "passive", "witness"):
            CLUSTER_ROLE.labels(name).set(1 if name == role else 0)
        CLUSTER_TERM.set(term)

    def activated(self, state: Any) -> None:
        """Counts the orders of the state the node starts from (`state.orders`: an Orders)."""
        self._states = {order_id: order.state for order_id, order in state.orders.live.items()}
        for order_id in state.orders.kept:
            self._states[order_id] = S.ORDER_STATE_FRESH  # kept orders wait for their start
        self._jobs = {}
        self._counts = {}
        for s in self._states.values():
            self._counts[s] = self._counts.get(s, 0) + 1
        for s in S.values():
            if s != S.ORDER_STATE_UNSPECIFIED:
                ORDERS.labels(state_label(s)).set(self._counts.get(s, 0))

    def deactivated(self) -> None:
        self._states, self._counts, self._jobs = {}, {}, {}
        for s in S.values():
            if s != S.ORDER_STATE_UNSPECIFIED:
                ORDERS.labels(state_label(s)).set(0)

    def committed(self, events: Iterable[events_pb2.Event], state: Any) -> None:
        orders = state.orders
        for event in events:
            kind = event.WhichOneof("kind")
            if not event.order_id or kind is None:
                continue
            ORDER_TRANSITIONS.labels(kind).inc()
            # The working state may be a batch ahead of this commit: the gauge follows it.
            order = orders.live.get(event.order_id)
            if order is not None:
                after: int | None = order.state
            else:
                after = S.ORDER_STATE_FRESH if event.order_id in orders.kept else None
            self._move(event.order_id, after)
            if kind == "order_processing_started" and order is not None:
                self._jobs[event.order_id] = (event.timestamp.ToMilliseconds(), *job_labels(state, order))
            elif kind == "order_processed" and (job := self._jobs.pop(event.order_id, None)):
                started, workflow, name = job
                seconds = max(event.timestamp.ToMilliseconds() - started, 0) / 1000
                outcome = outcome_label(event.order_processed.outcome)
                JOB_DURATION.labels(workflow, name, outcome).observe(seconds)
            elif after is None:
                self._jobs.pop(event.order_id, None)
        EVENTS_UNRELEASED.set(state.log.last_id - state.log.released_until)
        OUTPUT_HELD.set(state.log.unreleased_output)

    def _move(self, order_id: str, after: int | None) -> None:
        before = self._states.pop(order_id, None)
        if after is not None:
            self._states[order_id] = after
        if before == after:
            return
        for s, step in ((before, -1), (after, 1)):
            if s is not None:
                self._counts[s] = self._counts.get(s, 0) + step
                ORDERS.labels(state_label(s)).set(self._counts[s])


def job_labels(state: Any, order: order_pb2.Order) -> tuple[str, str]:
    """The workflow and the job at the order's position ("(inline)": a job without a name,
    "": no job there)."""
    try:
        instruction = instruction_at(state.workflow_of(order), order.position)
    except (KeyError, IndexError):
        return order.workflow_path, ""
    if instruction is None or instruction.WhichOneof("kind") != "execute":
        return order.workflow_path, ""
    return order.workflow_path, instruction.execute.job_name or "(inline)"
