"""The director's link to one subagent: one Session stream with heartbeats both ways.

It starts processes only for job executions whose start is committed, applies what the subagent
reports through the core (each numbered message once) and acknowledges only after that commit, so
the subagent keeps and re-sends whatever the journal does not have yet.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from director_svc.core import ProcessSpec
from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.subagent.v1 import subagent_pb2, subagent_pb2_grpc
from ostinato import rpc, tracing
from ostinato.journal.eventlog import BATCH_BYTES

if TYPE_CHECKING:
    from director_svc.server import Director

log = logging.getLogger(__name__)

# A subagent silent for this many heartbeat intervals is lost (heartbeats go both ways).
SILENT_HEARTBEATS = 4


class SubagentDriver:
    def __init__(self, director: Director, subagent_id: str, address: str) -> None:
        self.director = director
        self.subagent_id = subagent_id
        self.address = address
        self.ready = False
        self.running = 0
        self._wake = asyncio.Event()
        self.heartbeat_s = director.config.subagent_heartbeat_s
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
                    self._lost_since = asyncio.get_running_loop().time()
                    self.director.availability_changed()
                await channel.close()
            await self._give_up_jobs_if_lost_too_long()
            await asyncio.sleep(0.2)

    async def _give_up_jobs_if_lost_too_long(self) -> None:
        """Once the subagent has certainly killed the jobs it had (its director timeout after it
        noticed us gone, which it does within its heartbeat silence) or is down, those jobs end
        disrupted; the workflow decides what follows. Until then they may still finish there."""
        if self._lost_since is None:
            return
        run = self.director.core.state.subagent_runs.get(self.subagent_id)
        if run is None or not self.director.core.processing_keys(self.subagent_id):
            return
        lost_for = asyncio.get_running_loop().time() - self._lost_since
        if lost_for < run.director_timeout_s + 2 * SILENT_HEARTBEATS * self.heartbeat_s:
            return
        core = self.director.core
        await self.director.shell.command(
            lambda now: core.subagent_unreachable(self.subagent_id, lost_for, now, self.director.available())
        )

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
            first = await asyncio.wait_for(call.read(), 5)
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                raise ConnectionError(f"subagent {self.subagent_id} did not welcome the session")
            welcome = first.welcome
            core = self.director.core
            await self.director.shell.command(
                lambda now: core.subagent_welcome(self.subagent_id, welcome, now, self.director.available())
            )
            log.info("subagent %s at %s connected (run %s)", self.subagent_id, self.address, welcome.run_id)
            # Keys the subagent knows are never sent again; the rest that are due, once.
            sent = set(welcome.known_process_keys)
            self.ready = True
            self._lost_since = None
            self.director.availability_changed()
            inbox: asyncio.Queue[subagent_pb2.SessionResponse] = asyncio.Queue()
            tasks = [
                asyncio.create_task(self._read(call, inbox)),
                asyncio.create_task(self._apply(welcome.run_id, inbox, outbox)),
                asyncio.create_task(self._heartbeat(outbox)),
                asyncio.create_task(self._start_processes(outbox, sent)),
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
            message = await asyncio.wait_for(call.read(), SILENT_HEARTBEATS * self.heartbeat_s)
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
        core = self.director.core
        while True:
            batch = [await inbox.get()]
            size = len(batch[0].process_output.chunk)
            # Bounded in bytes too: one journal batch is held in several copies until committed.
            while not inbox.empty() and len(batch) < 1000 and size < BATCH_BYTES:
                batch.append(inbox.get_nowait())
                size += len(batch[-1].process_output.chunk)
            # Flow control: unacknowledged output stays with the subagent, whose job then waits.
            await self.director.shell.output_room()
            decide = functools.partial(
                core.subagent_messages, self.subagent_id, run_id, batch, available=self.director.available()
            )
            await self.director.shell.command(decide)
            outbox.put_nowait(subagent_pb2.SessionRequest(ack=subagent_pb2.Ack(until_seq=batch[-1].seq)))

    async def _heartbeat(self, outbox: asyncio.Queue[subagent_pb2.SessionRequest | None]) -> None:
        while True:
            outbox.put_nowait(subagent_pb2.SessionRequest(heartbeat=subagent_pb2.Heartbeat()))
            await asyncio.sleep(self.heartbeat_s)

    async def _start_processes(
        self, outbox: asyncio.Queue[subagent_pb2.SessionRequest | None], sent: set[str]
    ) -> None:
        killed: set[str] = set()
        attached: set[tuple[str, str]] = set()  # signed items handed over in this session
        while True:
            self._wake.clear()
            core = self.director.core
            # Prune by every execution still on this subagent, committed or not: pruning by the
            # committed ones only would forget a key while a newer event of its order is in flight.
            sent.intersection_update(core.processing_keys(self.subagent_id))
            self.running = len(sent)
            specs = core.processes_to_start(self.subagent_id, self.director.shell.committed_id)
            for key in core.processes_to_kill(self.subagent_id, self.director.shell.committed_id):
                if key in sent and key not in killed:
                    killed.add(key)
                    kill = subagent_pb2.KillProcess(process_key=key)
                    outbox.put_nowait(subagent_pb2.SessionRequest(kill_process=kill))
            killed.intersection_update(sent)
            for spec in specs:
                if spec.process_key not in sent:
                    sent.add(spec.process_key)
                    # The order carries its trace through the journals; this span puts the
                    # hand-over to the subagent into it.
                    with tracing.span_from_traceparent(
                        "job start",
                        spec.trace_parent,
                        order_id=spec.order_id,
                        job=spec.job_name,
                        subagent=self.subagent_id,
                    ):
                        request = start_request(spec)
                        request.trace_parent = tracing.current_traceparent() or spec.trace_parent
                    signed = self._unattached(spec, attached)
                    if signed:
                        attach = subagent_pb2.AttachSigned(items=signed)
                        outbox.put_nowait(subagent_pb2.SessionRequest(attach_signed=attach))
                    outbox.put_nowait(subagent_pb2.SessionRequest(start_process=request))
            await self._wake.wait()

    def _unattached(self, spec: ProcessSpec, attached: set[tuple[str, str]]) -> list[items_pb2.SignedItem]:
        """The signed workflow version and job resources the job needs that the subagent was not
        handed in this session: it verifies them and runs nothing else."""
        state = self.director.core.state
        wanted = [state.signed_workflows.get((spec.workflow_path, spec.workflow_version_id))]
        wanted += [state.signed_resources.get(path) for path in spec.job_resource_paths]
        items = [i for i in wanted if i is not None and (i.path, i.version_id) not in attached]
        attached.update((i.path, i.version_id) for i in items)
        return items


async def _drain(
    outbox: asyncio.Queue[subagent_pb2.SessionRequest | None],
) -> AsyncIterator[subagent_pb2.SessionRequest]:
    while True:
        item = await outbox.get()
        if item is None:
            return
        yield item


def start_request(spec: ProcessSpec) -> subagent_pb2.StartProcess:
    request = subagent_pb2.StartProcess(
        process_key=spec.process_key,
        order_id=spec.order_id,
        job_name=spec.job_name,
        env=spec.env,
        timeout_seconds=spec.timeout_s,
        sigkill_delay_seconds=spec.sigkill_delay_s,
        trace_parent=spec.trace_parent,
        workflow_path=spec.workflow_path,
        workflow_version_id=spec.workflow_version_id,
        position=spec.position,
    )
    if spec.executable.WhichOneof("kind") == "shell_script":
        request.shell_script = spec.executable.shell_script.script
    else:
        request.argv.argv.extend(spec.executable.command_line.argv)
    return request
