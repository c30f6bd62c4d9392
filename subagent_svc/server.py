"""The Session servicer: turns director requests into core decisions and process actions, and
streams the core's numbered messages back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc

from gen.ostinato.subagent.v1 import subagent_pb2 as pb
from gen.ostinato.subagent.v1 import subagent_pb2_grpc
from ostinato import metrics, rpc, signing, tls
from ostinato.errors import InvalidArgument, OstinatoError, Unavailable
from ostinato.process import Exited, Message
from subagent_svc import convert
from subagent_svc.core import SubagentCore
from subagent_svc.processes import Process, kill_orphans
from subagent_svc.signed import SignedWork

log = logging.getLogger(__name__)

# Readers of job pipes pause while this much output waits for the director's ack.
BUFFER_LIMIT = 4 * 1024 * 1024
DEFAULT_HEARTBEAT = 1.0
MISSED_HEARTBEATS = 3  # silence of this many heartbeat intervals means the director is lost
# Return code of a job this subagent refused to start (a shell's "cannot execute").
NOT_STARTED = 126


class Superseded(OstinatoError):
    code_name = "ABORTED"


@dataclass(eq=False)
class _Session:
    id: int
    heartbeat: float
    work: SignedWork  # what the director handed over signed in this session
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False
    error: OstinatoError | None = None
    reader: asyncio.Task[None] | None = None


class Subagent(subagent_pb2_grpc.SubagentServiceServicer):
    def __init__(
        self,
        subagent_id: str,
        data_dir: Path,
        director_timeout: float,
        verifier: signing.Verifier,
        process_limit: int = 0,
    ) -> None:
        self.subagent_id = subagent_id
        self.verifier = verifier  # whose signed workflows this subagent runs
        self.process_limit = process_limit  # the director keeps to it; told in the Welcome
        self.run_id = str(uuid.uuid4())
        self.records_dir = data_dir / "processes"
        self.work_dir = data_dir / "work"
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        self.core = SubagentCore(director_timeout, self._loop.time())
        self._session: _Session | None = None
        self._processes: dict[str, Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._stopping = False

    # Numbered messages and backpressure

    def _emit(self, message: Message) -> None:
        self.core.record(message)
        if isinstance(message, Exited):
            self._processes.pop(message.process_key, None)
        if self._session is not None:
            self._session.wake.set()

    async def _wait_for_room(self) -> None:
        while self.core.buffered_bytes > BUFFER_LIMIT and not self._stopping:
            self._room.clear()
            await self._room.wait()

    # The session stream

    async def Session(  # noqa: N802 (gRPC method name)
        self, requests: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SessionResponse]:
        stream = aiter(requests)
        try:
            async with asyncio.timeout(self.core.director_timeout):
                first = await anext(stream)
        except (StopAsyncIteration, TimeoutError):
            raise InvalidArgument("the session must start with hello", field="hello") from None
        kind = first.WhichOneof("kind")
        if kind != "hello":
            raise InvalidArgument(f"the first request must be hello, not {kind}", field="hello")
        hello = first.hello
        if self._stopping:
            raise Unavailable("the subagent is stopping")
        try:
            session_id = self.core.hello(hello.term, self._loop.time())
        except OstinatoError as e:
            log.warning("refused director %s: %s", hello.director_id, e)
            raise
        if self._session is not None:
            log.info("session %d superseded", self._session.id)
            self._end(self._session, Superseded(f"superseded by a session of term {hello.term}"))
        session = _Session(
            session_id, hello.heartbeat_seconds or DEFAULT_HEARTBEAT, SignedWork(self.verifier)
        )
        self._session = session
        metrics.DIRECTOR_SESSIONS.inc()
        # A cancelled call may leave this generator suspended at a yield, never reaching `finally`.
        context.add_done_callback(lambda _: self._end(session, None))
        log.info(
            "session %d of director %s (agent %s, term %d) accepted",
            session_id,
            hello.director_id,
            hello.agent_name,
            hello.term,
        )
        try:
            yield pb.SessionResponse(
                welcome=pb.Welcome(
                    subagent_id=self.subagent_id,
                    run_id=self.run_id,
                    known_process_keys=self.core.known_process_keys(),
                    director_timeout_seconds=self.core.director_timeout,
                    process_limit=self.process_limit,
                )
            )
            session.reader = asyncio.create_task(self._read(stream, session))
            next_heartbeat = self._loop.time() + session.heartbeat
            while not session.ended:
                now = self._loop.time()
                if now >= next_heartbeat:
                    next_heartbeat = now + session.heartbeat
                    yield pb.SessionResponse(heartbeat=pb.Heartbeat())
                    continue
                item = self.core.next_to_send(session.id)
                if item is not None:
                    yield convert.response(*item)
                    continue
                session.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(next_heartbeat - now):
                        await session.wake.wait()
            if session.error is not None:
                raise session.error
        finally:
            # Runs also when the director cancels the call: then the stream was lost.
            self._end(session, None)
            if session.reader is not None:
                session.reader.cancel()

    async def _read(self, stream: AsyncIterator[pb.SessionRequest], session: _Session) -> None:
        silence = session.heartbeat * MISSED_HEARTBEATS
        error: OstinatoError | None = None
        try:
            async with asyncio.timeout(silence) as deadline:
                async for request in stream:
                    deadline.reschedule(self._loop.time() + silence)
                    if not self._handle(request, session):
                        log.info("session %d ended by goodbye", session.id)
                        break
                else:
                    # A frozen client's stream can also end like this: only goodbye is a clean end.
                    log.warning("session %d: stream ended without goodbye", session.id)
        except TimeoutError:
            error = Unavailable(f"nothing from the director for {silence:g} s")
            log.warning("session %d lost: %s", session.id, error)
        except OstinatoError as e:
            error = e
            log.warning("session %d refused a request: %s", session.id, e)
        except grpc.RpcError as e:
            log.warning("session %d: stream failed: %s", session.id, e)
        except Exception:
            log.exception("session %d: request handling failed", session.id)
            error = OstinatoError("internal error of the subagent")
        self._end(session, error)

    def _handle(self, request: pb.SessionRequest, session: _Session) -> bool:
        """Applies one request; False ends the session."""
        if not self.core.is_live(session.id):
            return False  # superseded: a deposed director must not start or kill anything
        kind = request.WhichOneof("kind")
        if kind == "start_process":
            self._start(request.start_process, session.work)
        elif kind == "start_processes":
            for start in request.start_processes.processes:
                self._start(start, session.work)
        elif kind == "attach_signed":
            for refusal in session.work.attach(request.attach_signed.items, datetime.now(UTC)):
                log.warning("session %d: refused a signed item: %s", session.id, refusal)
        elif kind == "kill_process":
            process = self._processes.get(request.kill_process.process_key)
            if process is not None:
                process.kill(request.kill_process.immediately, "killed by KillProcess")
            else:
                log.info("kill_process: %s is not running, nothing to kill", request.kill_process.process_key)
        elif kind == "ack":
            self.core.ack(request.ack.until_seq)
            if self.core.buffered_bytes <= BUFFER_LIMIT:
                self._room.set()
        elif kind == "goodbye":
            return False
        elif kind == "hello":
            raise InvalidArgument("only the first request of a session may be hello", field="hello")
        return True

    def _start(self, request: pb.StartProcess, work: SignedWork) -> None:
        key = request.process_key
        if not self.core.start(key):
            log.info("start_process: %s is already known in this run, not started again", key)
            return
        refused = work.check(request)
        if refused is not None:
            log.warning("refused to start %s (order %s): %s", key, request.order_id, refused)
            message = f"subagent {self.subagent_id} refused to start the job: {refused}"
            self._emit(Exited(key, return_code=NOT_STARTED, message=message, not_started=True))
            return
        spec = convert.process_spec(request)
        if isinstance(spec, str):
            self._emit(Exited(key, return_code=127, message=spec, not_started=True))
            return
        process = Process(spec, self.work_dir, self.records_dir, self._emit, self._wait_for_room)
        self._processes[key] = process
        task = asyncio.create_task(process.run())
        self._tasks.add(task)
        task.add_done_callback(self._process_done)

    def _process_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("process task failed", exc_info=task.exception())

    def _end(self, session: _Session, error: OstinatoError | None) -> None:
        if session.ended:
            return
        session.ended = True
        session.error = error
        metrics.DIRECTOR_SESSIONS.dec()
        session.wake.set()
        if session.reader is not None and session.reader is not asyncio.current_task():
            session.reader.cancel()
        if self._session is session:
            self._session = None
        if self.core.session_ended(session.id, self._loop.time()):
            log.info(
                "no director session now; processes are killed after %g s without one",
                self.core.director_timeout,
            )

    # Shell duties outside sessions

    async def watch_director(self) -> None:
        """Kills the running processes once no session has existed for the director timeout, so a
        director that takes the agent elsewhere can start them again without a double run."""
        interval = min(0.25, self.core.director_timeout / 10)
        while True:
            for key in self.core.director_lost(self._loop.time()):
                process = self._processes.get(key)
                if process is not None:
                    log.warning("director lost: killing process %s", key)
                    process.kill(False, f"director lost: no session for {self.core.director_timeout:g} s")
            await asyncio.sleep(interval)

    async def shutdown(self) -> None:
        self._stopping = True
        self._room.set()  # killed processes' pipes must drain to EOF, or they are never reaped
        if self._session is not None:
            self._end(self._session, Unavailable("subagent stopping"))
        if self._processes:
            log.warning(
                "stopping: killing %d running process group(s): %s",
                len(self._processes),
                ", ".join(self._processes),
            )
        for process in list(self._processes.values()):
            process.kill(True, "subagent stopped")
        if self._tasks:
            # Lets the killed processes be reaped and their records removed.
            await asyncio.wait(set(self._tasks), timeout=5)


@dataclass
class Running:
    """A subagent serving: as its own process (subagent_svc) or built into a director."""

    subagent: Subagent
    server: rpc.Server
    watcher: asyncio.Task[None]

    async def stop(self) -> None:
        self.watcher.cancel()
        await self.subagent.shutdown()
        await self.server.stop(1.0)


async def start(
    subagent_id: str,
    data_dir: Path,
    listen: str,
    director_timeout: float,
    verifier: signing.Verifier,
    process_limit: int = 0,
    security: tls.Security | None = None,
) -> Running:
    """Kills what a previous run left behind, then serves the SubagentService on `listen` (with
    the process's security unless given one); runs jobs of workflows `verifier` verifies."""
    subagent = Subagent(subagent_id, data_dir, director_timeout, verifier, process_limit)
    for orphan in kill_orphans(subagent.records_dir):
        log.warning("killed orphan left by a previous run: %s", orphan)
    server = await rpc.start_server(
        listen,
        [
            (
                subagent_pb2_grpc.add_SubagentServiceServicer_to_server,
                subagent,
                rpc.service_name(pb, "SubagentService"),
            )
        ],
        security=security,
        service=f"subagent {subagent_id}",
    )
    log.info("subagent %s run %s listening on %s", subagent_id, subagent.run_id, server.address)
    return Running(subagent, server, asyncio.create_task(subagent.watch_director()))
