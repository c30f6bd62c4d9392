"""The director's link to one subagent: one Session stream with heartbeats both ways.

It starts processes only for job executions whose start is committed (the core hands each out
once, see `DirectorCore.subagent_work`), applies what the subagent reports through the core (each
numbered message once, everything waiting in the stream with one journal command) and
acknowledges only after that commit, so the subagent keeps and re-sends whatever the journal does
not have yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from director_svc import convert
from director_svc.core import DirectorCore, ProcessSpec, Stimulus, SubagentLost, SubagentUnreachable
from gen.ostinato.common.v1 import events_pb2, items_pb2
from gen.ostinato.subagent.v1 import subagent_pb2, subagent_pb2_grpc
from ostinato import limits, metrics, rpc, tracing
from ostinato.journal.eventlog import BATCH_BYTES

log = logging.getLogger(__name__)

# A subagent silent for this many heartbeat intervals is lost (heartbeats go both ways).
SILENT_HEARTBEATS = 4
# Starts (or signed items) in one message, at most.
BATCH = 500


class DirectorSide(Protocol):
    """What a driver needs of its director node."""

    agent: str
    director_id: str
    core: DirectorCore

    @property
    def term(self) -> int: ...

    @property
    def committed_id(self) -> int: ...

    async def handle(self, stimulus: Stimulus) -> list[events_pb2.Event]: ...

    async def output_room(self) -> None: ...


class SubagentDriver:
    def __init__(self, director: DirectorSide, subagent_id: str, address: str, heartbeat_s: float) -> None:
        self.director = director
        self.subagent_id = subagent_id
        self.address = address
        self.ready = False
        metrics.SUBAGENT_CONNECTED.labels(subagent_id).set(0)
        self._wake = asyncio.Event()
        self.heartbeat_s = heartbeat_s
        # Since when no session with the subagent exists (monotonic), while it has jobs of ours.
        self._lost_since: float | None = asyncio.get_running_loop().time()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            channel = rpc.channel(self.address)
            try:
                await self._session(subagent_pb2_grpc.SubagentServiceStub(channel))
            except (grpc.aio.AioRpcError, TimeoutError, ConnectionError) as e:
                if self.ready:
                    log.warning(
                        "subagent %s at %s lost: %s", self.subagent_id, self.address, rpc.short_error(e)
                    )
            finally:
                if self.ready:
                    self.ready = False
                    metrics.SUBAGENT_CONNECTED.labels(self.subagent_id).set(0)
                    self._lost_since = asyncio.get_running_loop().time()
                    # Nothing to journal (no jobs go there any more), so no commit to wait for.
                    assert not self.director.core.handle(SubagentLost(self.subagent_id), 0)
                await channel.close()
            await self._give_up_jobs_if_lost_too_long()
            await asyncio.sleep(0.2)

    async def _give_up_jobs_if_lost_too_long(self) -> None:
        """Once the subagent has certainly killed the jobs it had (its director timeout after it
        noticed us gone, which it does within its heartbeat silence) or is down, those jobs end
        disrupted; the workflow decides what follows. Until then they may still finish there."""
        if self._lost_since is None:
            return
        core = self.director.core
        run = core.state.subagent_runs.get(self.subagent_id)
        if run is None or not core.processing_keys(self.subagent_id):
            return
        lost_for = asyncio.get_running_loop().time() - self._lost_since
        if lost_for < run.director_timeout_s + 2 * SILENT_HEARTBEATS * self.heartbeat_s:
            return
        await self.director.handle(SubagentUnreachable(self.subagent_id, lost_for))

    async def _session(self, stub: subagent_pb2_grpc.SubagentServiceStub) -> None:
        outbox: asyncio.Queue[subagent_pb2.SessionRequest | None] = asyncio.Queue()
        hello = subagent_pb2.Hello(
            agent_name=self.director.agent,
            director_id=self.director.director_id,
            term=self.director.term,
            heartbeat_seconds=self.heartbeat_s,
        )
        outbox.put_nowait(subagent_pb2.SessionRequest(hello=hello))
        call = stub.Session(_drain(outbox))
        tasks: list[asyncio.Task[None]] = []
        try:
            first = await rpc.read_within(call, 5)
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                raise ConnectionError(f"subagent {self.subagent_id} did not welcome the session")
            welcome = convert.welcomed(self.subagent_id, first.welcome)
            await self.director.handle(welcome)
            log.info("subagent %s at %s connected (run %s)", self.subagent_id, self.address, welcome.run_id)
            self.ready = True
            self._lost_since = None
            metrics.SUBAGENT_CONNECTED.labels(self.subagent_id).set(1)
            metrics.SUBAGENT_CONNECTS.labels(self.subagent_id).inc()
            inbox: asyncio.Queue[subagent_pb2.SessionResponse] = asyncio.Queue()
            tasks = [
                asyncio.create_task(self._read(call, inbox)),
                asyncio.create_task(self._apply(welcome.run_id, inbox, outbox)),
                asyncio.create_task(self._heartbeat(outbox)),
                asyncio.create_task(self._send_work(outbox)),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            outbox.put_nowait(None)
            call.cancel()

    async def _read(
        self, call: grpc.aio.StreamStreamCall, inbox: asyncio.Queue[subagent_pb2.SessionResponse]
    ) -> None:
        while True:
            message = await rpc.read_within(call, SILENT_HEARTBEATS * self.heartbeat_s)
            if message is grpc.aio.EOF:
                raise ConnectionError("subagent ended the session")
            if message.seq > 0:
                inbox.put_nowait(message)

    async def _apply(
        self,
        run_id: str,
        inbox: asyncio.Queue[subagent_pb2.SessionResponse],
        outbox: asyncio.Queue[subagent_pb2.SessionRequest | None],
    ) -> None:
        while True:
            batch = [await inbox.get()]
            size = len(batch[0].process_output.chunk)
            # Bounded in bytes too: one journal batch is held in several copies until committed.
            while not inbox.empty() and len(batch) < 1000 and size < BATCH_BYTES:
                batch.append(inbox.get_nowait())
                size += len(batch[-1].process_output.chunk)
            # Flow control: unacknowledged output stays with the subagent, whose job then waits.
            await self.director.output_room()
            if await self.director.handle(convert.messages(self.subagent_id, run_id, batch)):
                # Acknowledged once journaled. A batch that changed nothing (a process started)
                # is not: the next acknowledgement covers it, and a message less goes out.
                outbox.put_nowait(subagent_pb2.SessionRequest(ack=subagent_pb2.Ack(until_seq=batch[-1].seq)))

    async def _heartbeat(self, outbox: asyncio.Queue[subagent_pb2.SessionRequest | None]) -> None:
        while True:
            outbox.put_nowait(subagent_pb2.SessionRequest(heartbeat=subagent_pb2.Heartbeat()))
            await asyncio.sleep(self.heartbeat_s)

    async def _send_work(self, outbox: asyncio.Queue[subagent_pb2.SessionRequest | None]) -> None:
        attached: set[tuple[str, str]] = set()  # signed items handed over in this session
        while True:
            self._wake.clear()
            work = self.director.core.subagent_work(self.subagent_id, self.director.committed_id)
            if work.starts:
                # Messages below limits.BATCH_BYTES: an item or a start's environment may be large.
                for items in limits.batches(self._unattached(work.starts, attached), BATCH):
                    attach = subagent_pb2.AttachSigned(items=items)
                    outbox.put_nowait(subagent_pb2.SessionRequest(attach_signed=attach))
                for starts in limits.batches([self._start_process(s) for s in work.starts], BATCH):
                    batch = subagent_pb2.StartProcesses(processes=starts)
                    outbox.put_nowait(subagent_pb2.SessionRequest(start_processes=batch))
            for key in work.kills:
                outbox.put_nowait(
                    subagent_pb2.SessionRequest(kill_process=subagent_pb2.KillProcess(process_key=key))
                )
            await self._wake.wait()

    def _start_process(self, spec: ProcessSpec) -> subagent_pb2.StartProcess:
        # The order carries its trace through the journals; this span puts the hand-over to the
        # subagent into it.
        with tracing.span_from_traceparent(
            "job start",
            spec.trace_parent,
            order_id=spec.order_id,
            workflow=spec.workflow_path,
            job=spec.job_name,
            agent=self.director.agent,
            subagent=self.subagent_id,
        ):
            request = convert.start_process(spec)
            request.trace_parent = tracing.current_traceparent() or spec.trace_parent
        return request

    def _unattached(
        self, specs: tuple[ProcessSpec, ...], attached: set[tuple[str, str]]
    ) -> list[items_pb2.SignedItem]:
        """The signed workflow versions and job resources the jobs need that the subagent was not
        handed in this session: it verifies them and runs nothing else."""
        state = self.director.core.state
        items: list[items_pb2.SignedItem] = []
        for spec in specs:
            wanted = [state.signed_workflows.get((spec.workflow_path, spec.workflow_version_id))]
            wanted += [state.signed_resources.get(path) for path in spec.job_resource_paths]
            for item in wanted:
                if item is not None and (item.path, item.version_id) not in attached:
                    attached.add((item.path, item.version_id))
                    items.append(item)
        return items


async def _drain(
    outbox: asyncio.Queue[subagent_pb2.SessionRequest | None],
) -> AsyncIterator[subagent_pb2.SessionRequest]:
    while True:
        item = await outbox.get()
        if item is None:
            return
        yield item
