"""The limits on client input (ostinato/limits.py), where input enters: each refusal names the
field, the size and the limit, and quotes no more than an excerpt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from director_svc.core import outcome_of
from gen.ostinato.common.v1 import commands_pb2, items_pb2, values_pb2, workflow_pb2
from joc_svc.inventory import canonical_draft
from ostinato import limits
from ostinato.errors import InvalidArgument
from ostinato.process import Exited
from ostinato.workflow import expressions
from ostinato.workflow.model import parse_workflow
from subagent_svc.processes import read_returned_values

WF = items_pb2.ITEM_TYPE_WORKFLOW
JOB = {"agent": "agent-1", "executable": {"shellScript": {"script": "true"}}}


def nested_if(depth: int) -> dict:
    instructions: list = [{"execute": {"jobName": "j"}}]
    for _ in range(depth):
        instructions = [{"ifElse": {"condition": "true", "then": {"instructions": instructions}}}]
    return {"instructions": instructions, "jobs": {"j": JOB}}


def nested_fork(depth: int) -> dict:
    instructions: list = [{"execute": {"jobName": "j"}}]
    for _ in range(depth):
        branch = {"id": "b", "block": {"instructions": instructions}}
        instructions = [{"fork": {"branches": [branch]}}]
    return {"instructions": instructions, "jobs": {"j": JOB}}


def refused(call, *args) -> InvalidArgument:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as info:
        call(*args)
    assert len(str(info.value)) < 1000, str(info.value)  # an excerpt, never the input
    return info.value


def test_a_workflow_too_large_is_refused_naming_json_size_and_limit() -> None:
    workflow = {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": JOB}}
    workflow["jobs"]["j"] = {**JOB, "defaultArguments": {"big": "'" + "x" * limits.ITEM_JSON_BYTES + "'"}}
    text = json.dumps(workflow)
    error = refused(canonical_draft, WF, text, "/big")
    assert error.field == "json"
    assert f"JSON of {len(text):,} bytes, more than the limit of 1,048,576 bytes" in str(error)


def test_blocks_nest_at_most_the_limit_and_the_deepest_allowed_survives_protobuf() -> None:
    from gen.ostinato.common.v1 import events_pb2
    from gen.ostinato.controller.v1 import controller_pb2

    for build in (nested_if, nested_fork):
        deepest = parse_workflow(json.dumps(build(limits.INSTRUCTION_NESTING)), "/w")
        # Inside an event inside a response, it still parses: binary protobuf stops at 100 levels.
        event = events_pb2.Event(id=1, item_deployed=events_pb2.ItemDeployed(workflow=deepest))
        response = controller_pb2.WatchEventsResponse(events=[event])
        assert controller_pb2.WatchEventsResponse.FromString(response.SerializeToString()) == response
        error = refused(parse_workflow, json.dumps(build(limits.INSTRUCTION_NESTING + 1)), "/w")
        assert f"blocks nested more than {limits.INSTRUCTION_NESTING} deep" in str(error)
        assert error.field.startswith("instructions[0].")
    # Far deeper than JSON may nest, or than Python's own parser could follow.
    for depth in (200, 100_000):
        text = "[" * depth + "]" * depth
        error = refused(parse_workflow, text, "/w")
        assert f"JSON nested more than {limits.JSON_NESTING} deep" in str(error)


def test_expressions_are_bounded_in_length_and_quoted_by_excerpt() -> None:
    error = refused(expressions.check, "(" * 100_000 + "1" + ")" * 100_000, "env.X")
    assert error.field == "env.X"
    assert "expression of 200,001 characters, more than the limit of 16,384" in str(error)
    error = refused(expressions.check, "(" * 40 + "1" + ")" * 40, "env.X")
    assert "more than 32 nested parentheses" in str(error) and "(81 characters)" in str(error)
    # Short ones are quoted whole, as before.
    assert "in '($a == 1'" in str(refused(expressions.check, "($a == 1", "c"))


def test_strings_an_expression_makes_stay_within_a_value() -> None:
    scope = expressions.MappingScope({"a": values_pb2.Value(string="x" * 40_000)})
    assert len(expressions.evaluate_text("$a ++ 'y'", scope)) == 40_001
    error = refused(expressions.evaluate, "$a ++ $a", scope)
    assert "a string of 80,000 bytes, more than the limit of 65,536" in str(error)
    error = refused(expressions.evaluate, "[$a, $a]", scope)
    assert "a value of 80,004 bytes, more than the limit of 65,536" in str(error)


def test_arguments_values_names_and_numbers_are_checked() -> None:
    ok = {"a": values_pb2.Value(string="x" * limits.VALUE_BYTES)}
    limits.check_arguments(ok, "arguments")
    big = {"a": values_pb2.Value(string="x" * (limits.VALUE_BYTES + 1))}
    error = refused(limits.check_arguments, big, "arguments")
    assert error.field == "arguments.a" and "a value of 65,537 bytes, more than the limit of 65,536" in str(
        error
    )
    many = {f"a{i}": values_pb2.Value(string="x" * 60_000) for i in range(5)}
    error = refused(limits.check_arguments, many, "arguments")
    assert error.field == "arguments" and "more than the limit of 262,144 bytes" in str(error)
    deep = values_pb2.Value(string="x")
    for _ in range(limits.VALUE_NESTING):
        deep = values_pb2.Value(list=values_pb2.ListValue(values=[deep]))
    error = refused(limits.check_arguments, {"d": deep}, "arguments")
    assert "nested more than 16 deep" in str(error)
    error = refused(limits.check_arguments, {"n": values_pb2.Value(number="12abc")}, "arguments")
    assert error.field == "arguments.n" and "not a number" in str(error)
    error = refused(limits.check_arguments, {"n" * 1000: values_pb2.Value(string="")}, "arguments")
    assert error.field == "arguments" and "a name of 1,000 characters" in str(error)


def test_order_commands_and_timestamps() -> None:
    command = commands_pb2.OrderCommand(order_id="o")
    command.resume.variables["v"].string = "x" * (limits.VALUE_BYTES + 1)
    assert (
        refused(limits.check_order_command, command, "commands[0]").field == "commands[0].resume.variables.v"
    )
    from google.protobuf.timestamp_pb2 import Timestamp

    limits.check_timestamp(Timestamp(seconds=0), "at")
    assert refused(limits.check_timestamp, Timestamp(seconds=10**12), "at").field == "at"


def test_excerpts_and_shortened_messages() -> None:
    assert limits.excerpt("short") == "'short'"
    text = "a" * 50 + "HERE" + "b" * 5000
    shown = limits.excerpt(text, 52)
    assert "HERE" in shown and shown.endswith("(5,054 characters)") and len(shown) < 100
    assert len(limits.shortened("x" * 100_000)) <= limits.MESSAGE_CHARS


def test_batches_are_bounded_by_count_and_bytes() -> None:
    items = [items_pb2.SignedItem(path="/p", json="x" * 1000) for _ in range(10)]
    assert [len(b) for b in limits.batches(items, 4)] == [4, 4, 2]
    assert [len(b) for b in limits.batches(items, 100, max_bytes=2500)] == [2, 2, 2, 2, 2]
    big = items_pb2.SignedItem(path="/big", json="x" * 10_000)
    assert [len(b) for b in limits.batches([items[0], big, items[1]], 100, max_bytes=2500)] == [1, 1, 1]


def test_returned_values_beyond_the_limits_fail_the_job(tmp_path: Path) -> None:
    path = tmp_path / "returns"
    path.write_text("a=1\nnoise\nb=two\n")
    assert read_returned_values(path) == ((("a", "1"), ("b", "two")), "")
    path.write_text("a=" + "x" * (limits.VALUE_BYTES + 1) + "\n")
    values, why = read_returned_values(path)
    assert values == () and why == "returned value 'a': 65,537 bytes, more than the limit of 65,536 bytes"
    path.write_text("a=1\n" * 200_000)
    values, why = read_returned_values(path)
    assert values == () and "$JS7_RETURN_VALUES of 800,000 bytes, more than the limit of 524,288" in why
    path.write_text("".join(f"k{i}=" + "x" * 60_000 + "\n" for i in range(5)))
    values, why = read_returned_values(path)
    assert values == () and why == "returned values: 300,010 bytes, more than the limit of 262,144 bytes"
    job = workflow_pb2.Job()
    outcome = outcome_of(Exited("k", 0, returned_values_refused=why), job)
    assert outcome.kind == workflow_pb2.OUTCOME_KIND_FAILED and outcome.message == why
    assert (
        outcome_of(Exited("k", 0, returned_values=(("a", "1"),)), job).kind
        == workflow_pb2.OUTCOME_KIND_SUCCEEDED
    )


def test_values_inside_a_workflow_are_bounded_too() -> None:
    job = {**JOB, "defaultArguments": {"a": {"string": "x" * (limits.VALUE_BYTES + 1)}}}
    workflow = {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": job}}
    assert refused(parse_workflow, json.dumps(workflow), "/w").field == "jobs.j.defaultArguments.a"
    deep: dict = {"string": "x"}
    for _ in range(limits.VALUE_NESTING):
        deep = {"list": {"values": [deep]}}
    workflow = {
        "orderPreparation": {"parameters": {"p": {"type": "PARAMETER_TYPE_LIST", "default": deep}}},
        "instructions": [{"execute": {"jobName": "j"}}],
        "jobs": {"j": JOB},
    }
    error = refused(parse_workflow, json.dumps(workflow), "/w")
    assert error.field.startswith("orderPreparation.parameters.p.default") and "nested more than 16" in str(
        error
    )
