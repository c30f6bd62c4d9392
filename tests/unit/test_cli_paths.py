"""How `ostinato deploy` names inventory objects after files and folders, and describes orders."""

from __future__ import annotations

from pathlib import Path

import pytest

from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2, workflow_pb2
from ostinato.cli.client import CliError
from ostinato.cli.inventory import collect_objects, inventory_path, object_type
from ostinato.cli.render import describe

WF = items_pb2.ITEM_TYPE_WORKFLOW


def test_object_type_by_suffix() -> None:
    assert object_type("hello.workflow.json") == ("hello", WF)
    assert object_type("db.jobresource.json") == ("db", items_pb2.ITEM_TYPE_JOB_RESOURCE)
    assert object_type("x.lock.json") == ("x", items_pb2.ITEM_TYPE_LOCK)
    assert object_type("c.subagentcluster.json") == ("c", items_pb2.ITEM_TYPE_SUBAGENT_CLUSTER)
    assert object_type("w.calendar.json") == ("w", items_pb2.ITEM_TYPE_CALENDAR)
    assert object_type("s.schedule.json") == ("s", items_pb2.ITEM_TYPE_SCHEDULE)
    assert object_type("a.b.workflow.json") == ("a.b", WF)
    for other in ["hello.json", ".workflow.json", "README.md", "workflow.json"]:
        assert object_type(other) is None


def test_inventory_path() -> None:
    assert inventory_path(Path("examples/a/b.workflow.json"), Path("examples")) == ("/a/b", WF)
    assert inventory_path(Path("examples/b.workflow.json"), Path("examples")) == ("/b", WF)
    assert inventory_path(Path("examples/a/b.workflow.json")) == ("/b", WF)
    assert inventory_path(Path("examples/a/notes.txt"), Path("examples")) is None


def test_collect_objects(tmp_path: Path) -> None:
    root = tmp_path / "examples"
    for name in [
        "a/b.workflow.json",
        "a/c/d.lock.json",
        "top.schedule.json",
        "a/notes.txt",
        ".git/x.workflow.json",
    ]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    single = tmp_path / "solo.jobresource.json"
    single.write_text("{}")

    found = collect_objects([root, single])
    assert [(o.path, o.type, o.file) for o in found] == [
        ("/a/b", WF, root / "a/b.workflow.json"),
        ("/a/c/d", items_pb2.ITEM_TYPE_LOCK, root / "a/c/d.lock.json"),
        ("/solo", items_pb2.ITEM_TYPE_JOB_RESOURCE, single),
        ("/top", items_pb2.ITEM_TYPE_SCHEDULE, root / "top.schedule.json"),
    ]
    # A folder below the argument names objects relative to the argument.
    assert [o.path for o in collect_objects([root / "a"])] == ["/b", "/c/d"]

    with pytest.raises(CliError, match="notes.txt: unknown object type"):
        collect_objects([root / "a/notes.txt"])
    with pytest.raises(CliError, match="no such file"):
        collect_objects([tmp_path / "missing"])
    collect_objects([root / "a/b.workflow.json", root / "a"])  # one file named twice is fine
    other = tmp_path / "other/b.workflow.json"
    other.parent.mkdir()
    other.write_text("{}")
    with pytest.raises(CliError, match="are both /b"):
        collect_objects([other, root / "a"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CliError, match="no inventory objects"):
        collect_objects([tmp_path / "empty"])


def test_describe_events() -> None:
    order = order_pb2.Order(id="o1", state=order_pb2.ORDER_STATE_PROCESSING, attempt=1)
    processing = events_pb2.Event(
        order_id="o1",
        order_processing_started=events_pb2.OrderProcessingStarted(
            processing=order_pb2.Processing(subagent_id="subagent-1")
        ),
    )
    assert describe(processing, order) == "o1 processing on subagent-1"
    moved = events_pb2.Event(order_id="o1", order_moved=events_pb2.OrderMoved(to=order_pb2.Position(nr=1)))
    assert describe(moved, order) == "o1 moved to 1"
    failed = workflow_pb2.Outcome(kind=workflow_pb2.OUTCOME_KIND_FAILED, return_code=3)
    processed = events_pb2.Event(order_id="o1", order_processed=events_pb2.OrderProcessed(outcome=failed))
    assert describe(processed, order) == "o1 processed: failed (return code 3)"
    finished = events_pb2.Event(order_id="o1", order_finished=events_pb2.OrderFinished())
    assert describe(finished, order) == "o1 finished"
    assert (
        describe(events_pb2.Event(order_id="o1", order_failed=events_pb2.OrderFailed()), order) == "o1 failed"
    )
    assert (
        describe(events_pb2.Event(order_id="o1", order_detachable=events_pb2.OrderDetachable()), order)
        is None
    )


def test_witness_runs_only_a_node_flagged_witness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ostinato.cli import main
    from ostinato.cluster.members import Cluster, Member

    file = tmp_path / "cluster.json"
    members = (Member("a", "h:1", "h:2"), Member("b", "h:3", "h:4"), Member("w", "h:5", "h:6", True))
    file.write_text(Cluster(members).to_json())
    for node, says in [
        (
            "a",
            'node a is a full node in {file}; flag it "witness": true there',
        ),
        ("x", "--node: no node 'x' in the cluster"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main(
                ["witness", "controller", "--cluster", str(file), "--node", node, "--data-dir", str(tmp_path)]
            )
        assert exited.value.code == 2
        assert says.format(file=file) in capsys.readouterr().err
