"""What a subagent may start: only jobs of signed workflows it verified itself. Pure.

Within a session the director hands over signed items (AttachSigned: the exact JSON text and the
signature of workflow versions, and of the job resources their jobs name) before the first
StartProcess that needs them. Each item is verified against the subagent's trusted certificates
and OpenPGP keys, bytes first, then parsed. A StartProcess then names its workflow version and the
job's position, and runs only when

- that workflow version was verified in this session,
- its instruction at that position is an Execute, and the program to start is exactly that job's
  executable (shell script or argv),
- every environment variable comes from the job's own env, the env of a verified job resource the
  job or its workflow names, or the few the director sets for every job (OSTINATO_ORDER_ID, ...).

Values (order variables evaluated by the director) are data, as the order's arguments are. So a
director that was taken over, or anyone holding its certificate, runs no command that an author
trusted by this subagent did not sign.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from gen.ostinato.common.v1 import items_pb2, workflow_pb2
from gen.ostinato.subagent.v1 import subagent_pb2 as pb
from ostinato import signing
from ostinato.errors import InvalidArgument, SignatureRejected
from ostinato.workflow import model, positions

# Set by the director for every job (director_svc/core.py, process_spec), besides the job's env.
DIRECTOR_ENV = frozenset(
    {
        "OSTINATO_ORDER_ID",
        "JS7_ORDER_ID",
        "OSTINATO_WORKFLOW_PATH",
        "OSTINATO_JOB_NAME",
        "OSTINATO_POSITION",
        "OSTINATO_SUBAGENT_ID",
    }
)


class SignedWork:
    """The signed items verified in one session, and the check of each start against them."""

    def __init__(self, verifier: signing.Verifier) -> None:
        self.verifier = verifier
        self.workflows: dict[tuple[str, str], workflow_pb2.Workflow] = {}
        self.job_resources: dict[str, workflow_pb2.JobResourceItem] = {}
        # Why an item was refused, by (path, version): starts that need it fail with the reason.
        self.refused: dict[tuple[str, str], str] = {}

    def attach(self, items: Iterable[items_pb2.SignedItem], now: datetime) -> list[str]:
        """Verifies and keeps each item; returns why items were refused (one line each)."""
        refusals = []
        for item in items:
            key = (item.path, item.version_id)
            try:
                if item.type not in (items_pb2.ITEM_TYPE_WORKFLOW, items_pb2.ITEM_TYPE_JOB_RESOURCE):
                    what = f"{signing.type_word(item.type)} {item.path}"
                    raise InvalidArgument(f"{what}: a subagent takes workflows and job resources only")
                if not item.signature.signature:
                    raise SignatureRejected(f"{signing.type_word(item.type)} {item.path}: unsigned")
                self.verifier.verify(item, now)
                if item.type == items_pb2.ITEM_TYPE_WORKFLOW:
                    self.workflows[key] = model.parse_workflow(item.json, item.path)
                else:
                    self.job_resources[item.path] = model.parse_item(item, workflow_pb2.JobResourceItem())
                self.refused.pop(key, None)
            except (SignatureRejected, InvalidArgument) as e:
                # The copy handed over last counts: a refused one replaces one verified before.
                self.refused[key] = str(e)
                self.workflows.pop(key, None)
                if item.type == items_pb2.ITEM_TYPE_JOB_RESOURCE:
                    self.job_resources.pop(item.path, None)
                refusals.append(str(e))
        return refusals

    def check(self, start: pb.StartProcess) -> str | None:
        """None when `start` runs a job of a verified workflow as signed; else why not."""
        where = f"workflow {start.workflow_path or '(none)'} version {start.workflow_version_id or '(none)'}"
        if not start.workflow_path:
            return "the start names no workflow: only jobs of signed workflows run here"
        key = (start.workflow_path, start.workflow_version_id)
        if key in self.refused:
            return f"{where} was refused: {self.refused[key]}"
        workflow = self.workflows.get(key)
        if workflow is None:
            return f"{where} was not handed over signed before its job"
        at = positions.text(start.position)
        instruction = positions.instruction_at(workflow, start.position)
        if instruction is None or instruction.WhichOneof("kind") != "execute":
            return f"{where} has no job at position {at}"
        try:
            name, job = model.job_of(workflow, instruction.execute)
        except (InvalidArgument, KeyError):
            return f"{where} has no job at position {at}"
        job_text = f"job {name or '@' + at} of {where}"
        executable = job.executable
        program = start.WhichOneof("program")
        if executable.WhichOneof("kind") == "shell_script":
            if program != "shell_script" or start.shell_script != executable.shell_script.script:
                return f"the program to start is not the signed script of {job_text}"
            own_env = executable.shell_script.env
        else:
            if program != "argv" or list(start.argv.argv) != list(executable.command_line.argv):
                return f"the program to start is not the signed command line of {job_text}"
            own_env = executable.command_line.env
        allowed = set(DIRECTOR_ENV) | set(own_env)
        refused_resources = []
        for path in [*job.job_resource_paths, *workflow.job_resource_paths]:
            resource = self.job_resources.get(path)
            if resource is not None:
                allowed |= set(resource.env)
            refused_resources += [why for (p, _), why in self.refused.items() if p == path]
        unknown = sorted(set(start.env) - allowed)
        if unknown:
            because = f" ({'; '.join(refused_resources)})" if refused_resources else ""
            return (
                f"environment variable {', '.join(unknown)} comes from neither {job_text} nor a signed"
                f" job resource it names{because}"
            )
        return None
