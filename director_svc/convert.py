"""The director's core types <-> the subagent protocol's protos."""

from __future__ import annotations

from director_svc.core import ProcessSpec, SubagentMessages, SubagentWelcomed
from gen.ostinato.subagent.v1 import subagent_pb2 as pb
from ostinato.process import Exited, Message, Output, Started, Stream


def welcomed(subagent_id: str, welcome: pb.Welcome) -> SubagentWelcomed:
    return SubagentWelcomed(
        subagent_id=subagent_id,
        run_id=welcome.run_id,
        known_process_keys=frozenset(welcome.known_process_keys),
        process_limit=welcome.process_limit,
        director_timeout_s=welcome.director_timeout_seconds,
    )


def messages(subagent_id: str, run_id: str, responses: list[pb.SessionResponse]) -> SubagentMessages:
    return SubagentMessages(subagent_id, run_id, tuple((r.seq, message(r)) for r in responses))


def message(response: pb.SessionResponse) -> Message:
    kind = response.WhichOneof("kind")
    if kind == "process_output":
        out = response.process_output
        stream = Stream.STDERR if out.stream == pb.OUTPUT_STREAM_STDERR else Stream.STDOUT
        return Output(out.process_key, stream, out.chunk)
    if kind == "process_exited":
        e = response.process_exited
        return Exited(
            e.process_key,
            return_code=e.return_code,
            signal=e.signal,
            message=e.message,
            timed_out=e.timed_out,
            returned_values=tuple(sorted(e.returned_values.items())),
            returned_values_refused=e.returned_values_refused,
            not_started=e.not_started,
        )
    assert kind == "process_started", kind  # only numbered messages come here
    return Started(response.process_started.process_key, response.process_started.pid)


def start_process(spec: ProcessSpec) -> pb.StartProcess:
    request = pb.StartProcess(
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
