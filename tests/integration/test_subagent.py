"""A real subagent process on port 0, driven over gRPC by a small test-side director, which hands
over each job as a signed one-job workflow (the subagent runs nothing else)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from gen.ostinato.common.v1 import items_pb2
from gen.ostinato.subagent.v1 import subagent_pb2 as pb
from gen.ostinato.subagent.v1 import subagent_pb2_grpc
from ostinato import rpc, signing, tls
from ostinato.launch import Launched, launch
from subagent_svc.processes import record_text
from tests.integration.certificates import Certificates
from tests.integration.support import eventually

pytestmark = pytest.mark.integration

WAIT = 10.0  # deadline for any single expected message


_open_directors: list[Director] = []


@pytest.fixture(scope="session")
def author(tmp_path_factory: pytest.TempPathFactory) -> tuple[signing.Signer, Path]:
    """Who signs the test workflows, and the certificate the subagent trusts for it."""
    key, certificate = signing.generate_root("test workflow author")
    trusted = tmp_path_factory.mktemp("author") / "author.pem"
    trusted.write_text(certificate)
    return signing.Signer(key, certificate), trusted


@pytest.fixture(autouse=True)
def as_director(certificates: Certificates, author: tuple[signing.Signer, Path]) -> None:
    """The test process plays the director: it shows the certificate the subagent accepts, and
    hands over workflows signed by the author the subagent trusts."""
    Director.default_security = certificates.security("director")
    Director.default_signer = author[0]


def signed_workflow(
    signer: signing.Signer, key: str, script: str, argv: list[str] | None, env: dict[str, str]
) -> items_pb2.SignedItem:
    """A one-job workflow (its job at position 0) that runs the program with these env names."""
    names = {name: "'set by the director'" for name in env}
    executable = (
        {"commandLine": {"argv": argv, "env": names}}
        if argv
        else {"shellScript": {"script": script, "env": names}}
    )
    path, version = f"/test/{key}", f"v-{key}"
    text = json.dumps(
        {
            "path": path,
            "versionId": version,
            "instructions": [{"execute": {"jobName": "j"}}],
            "jobs": {"j": {"agent": "agent-1", "executable": executable}},
        }
    )
    item = items_pb2.SignedItem(type=items_pb2.ITEM_TYPE_WORKFLOW, path=path, version_id=version, json=text)
    return signer.sign_item(item)


@pytest.fixture(autouse=True)
async def close_directors() -> AsyncIterator[None]:
    """A failed test leaves its sessions open; closing them here keeps the failure its own."""
    yield
    for director in list(_open_directors):
        await director.close(goodbye=False)


class Director:
    """One session, as a director would hold it: hello, heartbeats, commands, acks."""

    # The certificate a director shows, and who signed its workflows; set for each test (as_director).
    default_security: tls.Security = tls.INSECURE
    default_signer: signing.Signer | None = None

    def __init__(
        self,
        address: str,
        term: int = 1,
        heartbeat: float = 0.3,
        send_heartbeats: bool = True,
        security: tls.Security | None = None,
    ):
        self.address = address
        self.security = security or Director.default_security
        self.term = term
        self.heartbeat = heartbeat
        self.send_heartbeats = send_heartbeats
        self.welcome = pb.Welcome()
        self.last_seq = 0
        self.heartbeats_received = 0
        self._lock = asyncio.Lock()
        self._heartbeats: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._responses: asyncio.Queue[pb.SessionResponse | BaseException] = asyncio.Queue()

    async def open(self) -> Director:
        _open_directors.append(self)
        self.channel = rpc.channel(self.address, self.security)
        self.call = subagent_pb2_grpc.SubagentServiceStub(self.channel).Session()
        await self.send(
            hello=pb.Hello(
                agent_name="agent", director_id="test", term=self.term, heartbeat_seconds=self.heartbeat
            )
        )
        first = await asyncio.wait_for(self.call.read(), WAIT)
        assert first.WhichOneof("kind") == "welcome", first
        self.welcome = first.welcome
        # Cancelling a read cancels the whole call, so one task reads and waits happen on a queue.
        self._reader = asyncio.create_task(self._read())
        if self.send_heartbeats:
            self._heartbeats = asyncio.create_task(self._beat())
        return self

    async def _read(self) -> None:
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                if response.WhichOneof("kind") == "heartbeat":
                    self.heartbeats_received += 1
                else:
                    self._responses.put_nowait(response)
            self._responses.put_nowait(EOFError("stream ended"))
        except grpc.aio.AioRpcError as e:
            self._responses.put_nowait(e)

    async def _beat(self) -> None:
        # Ends by itself when closing: cancelling it in the middle of a write would cancel the call.
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.heartbeat)
            if not self._closing.is_set():
                await self.send(heartbeat=pb.Heartbeat())

    async def send(self, **kind: object) -> None:
        async with self._lock:
            await self.call.write(pb.SessionRequest(**kind))  # type: ignore[arg-type]

    async def start(
        self,
        key: str,
        script: str = "",
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        **fields: object,
    ) -> None:
        """Hands over the job as a signed one-job workflow, then starts it."""
        assert self.default_signer is not None
        item = signed_workflow(self.default_signer, key, script, argv, env or {})
        await self.send(attach_signed=pb.AttachSigned(items=[item]))
        await self.start_only(key, script, argv, env, item.path, item.version_id, **fields)

    async def start_only(
        self,
        key: str,
        script: str = "",
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        workflow_path: str = "",
        workflow_version_id: str = "",
        **fields: object,
    ) -> None:
        """A StartProcess as it is, of the workflow version named (attached or not)."""
        program: dict[str, object] = {"argv": pb.ArgvProgram(argv=argv)} if argv else {"shell_script": script}
        start = pb.StartProcess(
            process_key=key,
            env=env or {},
            workflow_path=workflow_path,
            workflow_version_id=workflow_version_id,
            **program,  # type: ignore[arg-type]
            **fields,  # type: ignore[arg-type]
        )
        await self.send(start_process=start)

    async def next(self, timeout: float = WAIT) -> pb.SessionResponse:
        """The next numbered message; heartbeats are skipped, seq must grow by one."""
        response = await asyncio.wait_for(self._responses.get(), timeout)
        if isinstance(response, BaseException):
            raise response
        assert response.seq == self.last_seq + 1 or self.last_seq == 0, (self.last_seq, response)
        self.last_seq = response.seq
        return response

    def pending(self) -> int:
        """Numbered messages received and not yet taken with next()."""
        return self._responses.qsize()

    async def until_exited(self, key: str, ack: bool = False) -> list[pb.SessionResponse]:
        """Every numbered message up to and including `key`'s ProcessExited."""
        seen = []
        while True:
            response = await self.next()
            seen.append(response)
            if ack:
                await self.send(ack=pb.Ack(until_seq=response.seq))
            if response.WhichOneof("kind") == "process_exited" and response.process_exited.process_key == key:
                return seen

    async def ack_all(self) -> None:
        await self.send(ack=pb.Ack(until_seq=self.last_seq))

    async def close(self, goodbye: bool = True) -> None:
        _open_directors.remove(self)
        self._closing.set()
        if self._heartbeats is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self._heartbeats  # its last write done (or the call already over)
        if goodbye and not self.call.done():
            await self.send(goodbye=pb.Goodbye())
            await self.call.done_writing()
        else:
            self.call.cancel()
        await self.channel.close()
        if self._reader is not None:
            self._reader.cancel()


def of_key(responses: list[pb.SessionResponse], key: str) -> list[pb.SessionResponse]:
    return [r for r in responses if getattr(r, r.WhichOneof("kind")).process_key == key]


def output(responses: list[pb.SessionResponse], stream: int) -> str:
    return "".join(
        r.process_output.chunk
        for r in responses
        if r.WhichOneof("kind") == "process_output" and r.process_output.stream == stream
    )


def kinds(responses: list[pb.SessionResponse]) -> list[str]:
    return [str(r.WhichOneof("kind")) for r in responses]


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is in the group (zombies wait for a parent to reap them)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


async def read_pid(path: Path) -> int:
    await eventually(lambda: path.exists() and path.read_text().strip() != "", WAIT, f"{path} written")
    return int(path.read_text())


@pytest.fixture
def subagent_factory(
    tmp_path: Path, certificates: Certificates, author: tuple[signing.Signer, Path]
) -> Iterator[Callable[..., Launched]]:
    started: list[Launched] = []

    def start(director_timeout: float = 10.0, env: dict[str, str] | None = None) -> Launched:
        data_dir = tmp_path / "subagent"
        launched = launch(
            "subagent",
            "subagent_svc",
            [
                "--data-dir",
                str(data_dir),
                "--id",
                "sub-1",
                "--director-timeout",
                str(director_timeout),
                *certificates.args("sub-1", peers=["director"]),
                *["--trust", str(author[1])],
            ],
            data_dir,
            env={"OSTINATO_SECRET": "not for jobs", **(env or {})},
        )
        started.append(launched)
        return launched

    yield start
    for launched in started:
        launched.stop()


@pytest.fixture
def subagent(subagent_factory: Callable[..., Launched]) -> Launched:
    return subagent_factory()


async def test_echo_job_streams_output_then_exit(subagent: Launched, tmp_path: Path) -> None:
    d = await Director(subagent.address).open()
    assert d.welcome.subagent_id == "sub-1"
    assert d.welcome.run_id and list(d.welcome.known_process_keys) == []
    assert d.welcome.director_timeout_seconds == 10.0
    await d.start(
        "k1",
        r"echo hello; echo oops >&2; printf 'caf\303'; sleep 0.2; printf '\251 \377\n'",
        env={"FOO": "bar"},
    )
    seen = await d.until_exited("k1")
    assert seen[0].seq == 1 and seen[0].process_started.pid > 0
    assert kinds(seen)[-1] == "process_exited" and set(kinds(seen)[1:-1]) == {"process_output"}
    assert output(seen, pb.OUTPUT_STREAM_STDOUT) == "hello\ncafé \ufffd\n"
    assert output(seen, pb.OUTPUT_STREAM_STDERR) == "oops\n"
    exited = seen[-1].process_exited
    assert (exited.return_code, exited.signal, exited.message, exited.timed_out) == (0, 0, "", False)

    # Only the given environment beside PATH, HOME, LANG, TMPDIR.
    await d.start("k2", 'echo "$FOO"; env | cut -d= -f1 | sort | tr "\\n" " "', env={"FOO": "bar"})
    seen = await d.until_exited("k2")
    lines = output(seen, pb.OUTPUT_STREAM_STDOUT).splitlines()
    assert lines[0] == "bar"
    assert "OSTINATO_SECRET" not in lines[1] and "VIRTUAL_ENV" not in lines[1]
    await d.close()


async def test_return_codes_and_start_failures(subagent: Launched) -> None:
    d = await Director(subagent.address).open()
    await d.start("fail", "echo partial; exit 3")
    seen = await d.until_exited("fail")
    assert seen[-1].process_exited.return_code == 3
    await d.start("missing", argv=["/nonexistent/program", "x"])
    seen = await d.until_exited("missing")
    assert kinds(seen) == ["process_exited"]
    assert seen[0].process_exited.return_code == 127
    assert "could not start" in seen[0].process_exited.message
    await d.start("argv", argv=["/bin/echo", "a b"])
    seen = await d.until_exited("argv")
    assert output(seen, pb.OUTPUT_STREAM_STDOUT) == "a b\n"
    await d.close()


async def test_same_key_is_started_once_per_run(subagent: Launched, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    script = f"echo run >> {runs}"
    d = await Director(subagent.address).open()
    await d.start("once", script)
    await d.start("once", script)
    await d.start("marker", "true")
    seen = await d.until_exited("marker")
    assert kinds(of_key(seen, "once")) == ["process_started", "process_exited"]
    await d.close()

    # A restarted director sends the command again; the unacknowledged exit is still known.
    d = await Director(subagent.address).open()
    assert "once" in d.welcome.known_process_keys
    await d.start("once", script)
    await d.start("marker2", "true")
    seen = await d.until_exited("marker2")
    assert kinds(of_key(seen, "once")) == ["process_started", "process_exited"]  # resent, not rerun
    assert runs.read_text() == "run\n"
    await d.close()


async def test_unacknowledged_messages_are_resent_with_their_seq_until_acked(subagent: Launched) -> None:
    d = await Director(subagent.address).open()
    await d.start("a", "echo one")
    first = await d.until_exited("a")
    await d.send(ack=pb.Ack(until_seq=first[0].seq))  # only ProcessStarted is applied
    await d.close()

    d = await Director(subagent.address).open()
    assert list(d.welcome.known_process_keys) == ["a"]
    again = [await d.next() for _ in first[1:]]
    assert again == first[1:]
    await d.ack_all()
    await d.close()

    d = await Director(subagent.address).open()
    assert list(d.welcome.known_process_keys) == []
    await d.start("b", "true")
    response = await d.next()
    assert response.process_started.process_key == "b" and response.seq == first[-1].seq + 1
    await d.close()


async def test_processes_are_killed_when_the_director_stays_away(
    subagent_factory: Callable[..., Launched], tmp_path: Path
) -> None:
    timeout = 1.5
    subagent = subagent_factory(director_timeout=timeout)
    pid_file = tmp_path / "pid"
    d = await Director(subagent.address).open()
    await d.start("long", f"echo $$ > {pid_file}; sleep 60")
    assert (await d.next()).process_started.process_key == "long"
    pgid = await read_pid(pid_file)
    await d.close(goodbye=False)  # the director vanishes
    lost = time.monotonic()
    await eventually(lambda: not group_alive(pgid), timeout + 5, "process group killed")
    assert time.monotonic() - lost > timeout - 0.5

    d = await Director(subagent.address).open()
    assert list(d.welcome.known_process_keys) == ["long"]
    seen = await d.until_exited("long")
    assert kinds(seen) == ["process_started", "process_exited"]
    exited = seen[-1].process_exited
    assert "director lost" in exited.message
    assert exited.signal == signal.SIGTERM and exited.return_code == 128 + signal.SIGTERM
    await d.close()


async def test_a_director_back_within_the_timeout_gets_the_result_once(
    subagent_factory: Callable[..., Launched], tmp_path: Path
) -> None:
    subagent = subagent_factory(director_timeout=5)
    go = tmp_path / "go"
    d = await Director(subagent.address).open()
    await d.start("job", f"while [ ! -e {go} ]; do sleep 0.05; done; echo done")
    started = await d.next()
    assert started.process_started.process_key == "job"
    await d.close(goodbye=False)

    d = await Director(subagent.address).open()
    assert list(d.welcome.known_process_keys) == ["job"]
    go.touch()
    seen = await d.until_exited("job", ack=True)
    assert seen[0] == started  # resent: it was never acknowledged
    assert kinds(seen) == ["process_started", "process_output", "process_exited"]
    assert seen[-1].process_exited.return_code == 0 and seen[-1].process_exited.message == ""
    await d.start("marker", "true")
    seen = await d.until_exited("marker")
    assert of_key(seen, "job") == []
    await d.close()


async def test_kill_process(subagent: Launched) -> None:
    d = await Director(subagent.address).open()
    await d.start("term", "sleep 60")
    assert (await d.next()).process_started.process_key == "term"
    await d.send(kill_process=pb.KillProcess(process_key="term"))
    exited = (await d.until_exited("term"))[-1].process_exited
    assert exited.signal == signal.SIGTERM and "KillProcess" in exited.message and not exited.timed_out

    # TERM ignored: the group gets SIGKILL after the sigkill delay, or at once when asked.
    stubborn = "trap '' TERM; echo ready; while :; do sleep 0.05; done"
    await d.start("delayed", stubborn, sigkill_delay_seconds=0.5)
    await d.start("now", stubborn)
    ready: set[str] = set()
    while ready != {"delayed", "now"}:
        response = await d.next()
        if response.WhichOneof("kind") == "process_output":
            ready.add(response.process_output.process_key)
    await d.send(kill_process=pb.KillProcess(process_key="delayed"))
    await d.send(kill_process=pb.KillProcess(process_key="now", immediately=True))
    await d.send(kill_process=pb.KillProcess(process_key="unknown", immediately=True))
    exited = (await d.until_exited("now"))[-1].process_exited
    assert exited.signal == signal.SIGKILL
    exited = (await d.until_exited("delayed"))[-1].process_exited
    assert exited.signal == signal.SIGKILL
    await d.close()


async def test_timeout_kills_the_process(subagent: Launched) -> None:
    d = await Director(subagent.address).open()
    begin = time.monotonic()
    await d.start("slow", "sleep 60", timeout_seconds=0.5)
    exited = (await d.until_exited("slow"))[-1].process_exited
    assert exited.timed_out and exited.signal == signal.SIGTERM and "timed out" in exited.message
    assert 0.4 < time.monotonic() - begin < WAIT
    await d.close()


async def test_terms_fence_sessions(subagent: Launched) -> None:
    a = await Director(subagent.address, term=5).open()
    b = await Director(subagent.address, term=6).open()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        while True:
            await a.next()
    assert raised.value.code() == grpc.StatusCode.ABORTED
    await a.close(goodbye=False)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await Director(subagent.address, term=5).open()
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "term" in (raised.value.details() or "")

    await b.start("still", "true")  # the refused hello left the live session alone
    await b.until_exited("still")
    await b.close()


async def test_session_rules(subagent: Launched) -> None:
    channel = rpc.channel(subagent.address, Director.default_security)
    call = subagent_pb2_grpc.SubagentServiceStub(channel).Session()
    await call.write(pb.SessionRequest(heartbeat=pb.Heartbeat()))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in (raised.value.details() or "")
    await channel.close()

    # A director that sends nothing is lost after three heartbeat intervals.
    silent = await Director(subagent.address, heartbeat=0.2, send_heartbeats=False).open()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        while True:
            await silent.next(timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert silent.heartbeats_received >= 1
    await silent.close(goodbye=False)


async def test_large_output_is_bounded_by_acks(subagent: Launched) -> None:
    total = 20_000_000
    d = await Director(subagent.address).open()
    await d.start("big", f"yes 'ostinato output line, the same again and again' | head -c {total}")
    assert (await d.next()).process_started.process_key == "big"

    # Without acks the subagent stops reading at its buffer bound (4 MiB of chunks).
    received = 0
    while received < 3.5 * 1024 * 1024:
        received += len((await d.next()).process_output.chunk)
    with pytest.raises(TimeoutError):
        while True:
            received += len((await d.next(timeout=1.0)).process_output.chunk)
    assert 3.5 * 1024 * 1024 < received < 5 * 1024 * 1024

    # Acking as it reads lets the rest through.
    await d.ack_all()
    unacked = 0
    while True:
        response = await d.next()
        if response.WhichOneof("kind") == "process_exited":
            break
        received += len(response.process_output.chunk)
        unacked += len(response.process_output.chunk)
        if unacked > 512 * 1024:
            await d.ack_all()
            unacked = 0
    assert response.process_exited.return_code == 0
    assert received == total
    status = Path(f"/proc/{subagent.process.pid}/status").read_text()
    peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    print(f"subagent peak RSS after {total} bytes of output: {peak_kb / 1024:.1f} MiB")
    assert peak_kb < 150 * 1024
    await d.close()


async def test_orphans_of_a_previous_run_are_killed(
    subagent_factory: Callable[..., Launched], tmp_path: Path
) -> None:
    records = tmp_path / "subagent" / "processes"
    records.mkdir(parents=True)
    orphan = subprocess.Popen(["sleep", "60"], start_new_session=True)
    (records / "old-job.pid").write_text(record_text(orphan.pid))
    # Records whose id now names someone else's group: from before a reboot, or a reused pid.
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    boot, start = record_text(bystander.pid).split()[1:]
    (records / "before-reboot.pid").write_text(f"{bystander.pid} not-{boot} {start}\n")
    (records / "reused.pid").write_text(f"{bystander.pid} {boot} {int(start) - 1}\n")
    try:
        subagent = subagent_factory()
        assert orphan.wait(timeout=WAIT) == -signal.SIGKILL
        assert list(records.iterdir()) == []
        assert "killed orphan left by a previous run: old-job" in subagent.log_text()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


async def test_stop_kills_running_jobs(subagent: Launched, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    d = await Director(subagent.address).open()
    await d.start("long", f"echo $$ > {pid_file}; sleep 60")
    pgid = await read_pid(pid_file)
    record = list((tmp_path / "subagent" / "processes").iterdir())
    assert [p.read_text().split()[0] for p in record] == [str(pgid)]
    assert subagent.stop() == 0
    assert not group_alive(pgid)
    assert list((tmp_path / "subagent" / "processes").iterdir()) == []
    assert "killing 1 running process group" in subagent.log_text()
    await d.close(goodbye=False)


async def test_only_jobs_of_verified_signed_workflows_start(
    subagent: Launched, tmp_path: Path, author: tuple[signing.Signer, Path]
) -> None:
    """What a director that was taken over (it has the director's certificate) may try: each start
    ends at once as not started, with the reason, and nothing runs."""
    signer, _ = author
    ran = tmp_path / "ran"
    script = f"touch {ran}"
    d = await Director(subagent.address).open()

    good = signed_workflow(signer, "good", script, None, {"NAME": "x"})
    tampered = items_pb2.SignedItem()
    tampered.CopyFrom(signed_workflow(signer, "tampered", script, None, {}))
    tampered.json = tampered.json.replace("touch", "rm -f")
    other_key, other_certificate = signing.generate_root("nobody trusts me")
    stranger = signed_workflow(signing.Signer(other_key, other_certificate), "stranger", script, None, {})
    unsigned = signed_workflow(signer, "unsigned", script, None, {})
    unsigned.ClearField("signature")
    await d.send(attach_signed=pb.AttachSigned(items=[good, tampered, stranger, unsigned]))

    def of(item: items_pb2.SignedItem) -> dict[str, str]:
        return {"workflow_path": item.path, "workflow_version_id": item.version_id}

    attempts = {
        "no-workflow": ({}, {}, "the start names no workflow"),
        "not-attached": (
            {"workflow_path": "/test/other", "workflow_version_id": "v"},
            {},
            "not handed over signed",
        ),
        "tampered": (of(tampered), {}, "signature does not match the JSON text"),
        "stranger": (of(stranger), {}, "CN=nobody trusts me"),
        "unsigned": (of(unsigned), {}, "unsigned"),
        "another-script": (of(good), {"script": "id > f"}, "is not the signed script of job j"),
        "preloaded": (
            of(good),
            {"env": {"NAME": "1", "LD_PRELOAD": "/tmp/evil.so"}},
            "LD_PRELOAD comes from",
        ),
    }
    for key, (where, changed, _) in attempts.items():
        program = {"script": script, **changed}
        await d.start_only(key, **program, **where)  # type: ignore[arg-type]
    for key, (_, _, why) in attempts.items():
        [exited] = await d.until_exited(key)
        refused = exited.process_exited
        assert refused.not_started and refused.return_code == 126, (key, refused)
        assert "subagent sub-1 refused to start the job" in refused.message and why in refused.message, (
            key,
            refused.message,
        )
    assert not ran.exists()

    # The same workflow as signed runs (its env names are the job's own).
    await d.start_only("signed", script, env={"NAME": "1"}, **of(good))
    seen = await d.until_exited("signed")
    assert seen[-1].process_exited.return_code == 0 and ran.exists()
    await d.close()
    assert "refused a signed item: workflow /test/tampered" in subagent.log_text()
