"""Core and process types <-> subagent protos."""

from __future__ import annotations

from gen.ostinato.subagent.v1 import subagent_pb2 as pb
from ostinato.process import Exited, Message, Output, Started, Stream
from subagent_svc.processes import ProcessSpec

_STREAMS = {Stream.STDOUT: pb.OUTPUT_STREAM_STDOUT, Stream.STDERR: pb.OUTPUT_STREAM_STDERR}


def response(seq: int, message: Message) -> pb.SessionResponse:
    if isinstance(message, Output):
        return pb.SessionResponse(
            seq=seq,
            process_output=pb.ProcessOutput(
                process_key=message.process_key, stream=_STREAMS[message.stream], chunk=message.chunk
            ),
        )
    if isinstance(message, Started):
        return pb.SessionResponse(
            seq=seq, process_started=pb.ProcessStarted(process_key=message.process_key, pid=message.pid)
        )
    assert isinstance(message, Exited)
    return pb.SessionResponse(
        seq=seq,
        process_exited=pb.ProcessExited(
            process_key=message.process_key,
            return_code=message.return_code,
            signal=message.signal,
            message=message.message,
            timed_out=message.timed_out,
            returned_values=dict(message.returned_values),
            not_started=message.not_started,
            returned_values_refused=message.returned_values_refused,
        ),
    )


def process_spec(request: pb.StartProcess) -> ProcessSpec | str:
    """The spec, or why the request cannot describe a process (naming the field)."""
    program = request.WhichOneof("program")
    if program == "shell_script":
        argv = ["/bin/sh", "-c", request.shell_script]
    elif program == "argv" and request.argv.argv:
        argv = list(request.argv.argv)
    else:
        return "start_process.program: give shell_script or a non-empty argv"
    return ProcessSpec(
        process_key=request.process_key,
        argv=argv,
        env=dict(request.env),
        timeout=request.timeout_seconds,
        sigkill_delay=request.sigkill_delay_seconds,
        trace_parent=request.trace_parent,
        order_id=request.order_id,
        job_name=request.job_name,
    )
