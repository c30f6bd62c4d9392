"""Running one job process: start it in its own process group, stream its pipes, kill it, report.

Everything a process does comes out as core messages through `emit`, in the order the director
relies on: ProcessStarted, then output, then ProcessExited (or only ProcessExited if it never ran).
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import hashlib
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ostinato import limits, logs, metrics, tracing
from ostinato.process import Exited, Message, Output, Started, Stream

log = logging.getLogger(__name__)

READ_SIZE = 32 * 1024
RETURN_VALUES_VARIABLE = "JS7_RETURN_VALUES"
INHERITED_ENV = ("PATH", "HOME", "LANG", "TMPDIR")
DEFAULT_SIGKILL_DELAY = 15.0


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    process_key: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 0.0
    sigkill_delay: float = 0.0
    trace_parent: str = ""
    order_id: str = ""
    job_name: str = ""


def record_path(records_dir: Path, process_key: str, suffix: str = ".pid") -> Path:
    """A file name for any key: readable prefix, digest for uniqueness."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", process_key)[:60]
    digest = hashlib.sha256(process_key.encode()).hexdigest()[:16]
    return records_dir / f"{readable}-{digest}{suffix}"


def read_returned_values(path: Path) -> tuple[tuple[tuple[str, str], ...], str]:
    """key=value lines a job wrote to its return-values file (JS7's convention; others ignored),
    and why they are refused ("" if not): a file, a name or a value beyond ostinato.limits."""
    try:
        with open(path, "rb") as f:
            data = f.read(limits.RETURN_VALUES_FILE_BYTES + 1)
    except FileNotFoundError:
        return (), ""
    if len(data) > limits.RETURN_VALUES_FILE_BYTES:
        size = limits.size_text(path.stat().st_size)
        limit = limits.size_text(limits.RETURN_VALUES_FILE_BYTES)
        return (), f"return values file ${RETURN_VALUES_VARIABLE} of {size}, more than the limit of {limit}"
    values = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = value
    refused = limits.check_returned_values(values.items())
    return ((), refused) if refused else (tuple(values.items()), "")


@functools.cache
def _boot_id() -> str:
    """Read once: it changes only with a reboot, and every job's record names it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def record_text(pgid: int) -> str:
    """The group id with what tells a later run whether that id still means our group."""
    return f"{pgid} {_boot_id()} {_start_time(pgid)}\n"


def kill_orphans(records_dir: Path) -> list[str]:
    """SIGKILLs the process groups a previous run left recorded (it died without cleaning up).

    A record from before a reboot, or whose leader's pid now belongs to a younger process, names
    someone else's group. While any member of a group lives, Linux does not reuse its id, so a
    group whose leader is gone may still be ours.
    """
    killed = []
    for path in sorted(records_dir.glob("*.pid")):
        try:
            pgid_text, *identity = path.read_text().split()
            pgid = int(pgid_text)
            boot, start = (identity + ["", ""])[:2]
            current_start = _start_time(pgid)
            if (boot and boot != _boot_id()) or (start and current_start and current_start != start):
                continue
            os.killpg(pgid, signal.SIGKILL)
            killed.append(f"{path.stem} (process group {pgid})")
        except (ValueError, ProcessLookupError, PermissionError):
            pass
        finally:
            path.unlink(missing_ok=True)
    return killed


@functools.cache
def _pidfd_works() -> bool:
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False  # 3.12 chooses it itself
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel before 5.3
        return False
    return True


_pidfd_loop: asyncio.AbstractEventLoop | None = None


def _watch_children_by_pidfd() -> None:
    """Python 3.11 learns of a child's exit from a thread per child (ThreadedChildWatcher); a
    pidfd in the event loop spawns about 40 % more jobs per second here."""
    global _pidfd_loop
    loop = asyncio.get_running_loop()
    if _pidfd_loop is loop or not _pidfd_works():
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.get_event_loop_policy().set_child_watcher(watcher)
    _pidfd_loop = loop


def job_env(spec: ProcessSpec, trace_parent: str = "") -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    trace_parent = trace_parent or spec.trace_parent
    if trace_parent:
        env["TRACEPARENT"] = trace_parent  # the environment-variable carrier convention of OTel
    env.update(spec.env)
    return env


class Process:
    def __init__(
        self,
        spec: ProcessSpec,
        work_dir: Path,
        records_dir: Path,
        emit: Callable[[Message], None],
        wait_for_room: Callable[[], Awaitable[None]],
    ) -> None:
        self.spec = spec
        self._work_dir = work_dir
        self._record = record_path(records_dir, spec.process_key)
        # The job names its return values in this file (as JS7 jobs do with $JS7_RETURN_VALUES).
        self._returns = record_path(work_dir, spec.process_key, ".returns")
        self._emit = emit
        self._wait_for_room = wait_for_room
        self._process: asyncio.subprocess.Process | None = None
        self._kill_reason = ""
        self._timed_out = False
        self._kill_now = False  # asked to SIGKILL before the process existed
        self._sigkill_timer: asyncio.TimerHandle | None = None
        self._done = False
        self._log_fields: dict[str, str] = {}  # order, workflow, job, trace of its log lines

    def kill(self, immediately: bool, reason: str, timed_out: bool = False) -> None:
        """SIGKILL, or SIGTERM then SIGKILL after the sigkill delay, to the whole process group."""
        if self._done:
            return
        if not self._kill_reason:  # the first reason is the one reported
            self._kill_reason, self._timed_out = reason, timed_out
        if self._process is None:
            self._kill_now = self._kill_now or immediately
            return
        if immediately:
            self._signal(signal.SIGKILL)
            return
        self._signal(signal.SIGTERM)
        if self._sigkill_timer is None:
            delay = self.spec.sigkill_delay or DEFAULT_SIGKILL_DELAY
            self._sigkill_timer = asyncio.get_running_loop().call_later(delay, self._signal, signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self._process is None or self._done:
            return
        try:
            # start_new_session made the process a group leader: its pid is the group id.
            os.killpg(self._process.pid, sig)
        except ProcessLookupError:
            pass

    async def run(self) -> None:
        # The process's span joins the order's trace; the job sees it as its TRACEPARENT.
        spec = self.spec
        with tracing.span_from_traceparent(
            "job process",
            spec.trace_parent,
            order_id=spec.order_id,
            workflow=spec.env.get("OSTINATO_WORKFLOW_PATH", ""),
            job=spec.job_name,
            subagent=spec.env.get("OSTINATO_SUBAGENT_ID", ""),
            process_key=spec.process_key,
        ):
            await self._run(tracing.current_traceparent())

    async def _run(self, trace_parent: str) -> None:
        spec = self.spec
        self._log_fields = logs.about_order(
            spec.order_id,
            spec.env.get("OSTINATO_WORKFLOW_PATH", ""),
            spec.job_name,
            trace_parent,
            subagent=spec.env.get("OSTINATO_SUBAGENT_ID", ""),
        )
        _watch_children_by_pidfd()
        try:
            process = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self._work_dir,
                env={**job_env(spec, trace_parent), **self._returns_env()},
                start_new_session=True,
            )
        except OSError as e:
            self._done = True
            log.warning(
                "process %s could not start: %s (order %r, job %r)",
                spec.process_key,
                e,
                spec.order_id,
                spec.job_name,
                extra=self._log_fields,
            )
            # The shell's convention: 126 found but not executable, 127 not found.
            code = 126 if isinstance(e, PermissionError) else 127
            self._emit(Exited(spec.process_key, return_code=code, message=f"could not start: {e}"))
            return
        self._process = process
        try:
            self._record.write_text(record_text(process.pid))
        except OSError as e:  # the record only guards against our own crash; the job runs on
            log.warning("process %s: cannot record its process group: %s", spec.process_key, e)
        log.info(
            "process %s started, pid %d (order %r, job %r)",
            spec.process_key,
            process.pid,
            spec.order_id,
            spec.job_name,
            extra=self._log_fields,
        )
        self._emit(Started(spec.process_key, process.pid))
        metrics.PROCESSES_STARTED.inc()
        metrics.PROCESSES_RUNNING.inc()
        if self._kill_reason:
            self.kill(self._kill_now, self._kill_reason, self._timed_out)
        timeout_timer = None
        if spec.timeout > 0:
            timeout_timer = asyncio.get_running_loop().call_later(
                spec.timeout, self.kill, False, f"timed out after {spec.timeout:g} s", True
            )
        try:
            assert process.stdout is not None and process.stderr is not None
            # The process counts as running until its pipes close too: output of children that
            # outlive it still belongs before ProcessExited.
            await asyncio.gather(
                self._pump(process.stdout, Stream.STDOUT), self._pump(process.stderr, Stream.STDERR)
            )
            returncode = await process.wait()
        finally:
            self._done = True
            metrics.PROCESSES_RUNNING.dec()
            for timer in (timeout_timer, self._sigkill_timer):
                if timer is not None:
                    timer.cancel()
            self._record.unlink(missing_ok=True)
        signum = -returncode if returncode < 0 else 0
        log.info(
            "process %s exited with %s%s",
            spec.process_key,
            f"signal {signum}" if signum else f"return code {returncode}",
            f" ({self._kill_reason})" if self._kill_reason else "",
            extra=self._log_fields,
        )
        returned_values, refused = read_returned_values(self._returns)
        self._emit(
            Exited(
                spec.process_key,
                # 128 + signal, as a shell reports it, so that a killed process never looks successful.
                return_code=128 + signum if signum else returncode,
                signal=signum,
                message=self._kill_reason,
                timed_out=self._timed_out,
                returned_values=returned_values,
                returned_values_refused=refused,
            )
        )
        self._returns.unlink(missing_ok=True)

    def _returns_env(self) -> dict[str, str]:
        path = str(self._returns)
        return {RETURN_VALUES_VARIABLE: path, "OSTINATO_RETURN_VALUES": path}

    async def _pump(self, reader: asyncio.StreamReader, stream: Stream) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            # Not reading is the backpressure: the pipe fills and the job blocks in write().
            await self._wait_for_room()
            data = await reader.read(READ_SIZE)
            text = decoder.decode(data, final=not data)
            if text:
                self._emit(Output(self.spec.process_key, stream, text))
            if not data:
                return
