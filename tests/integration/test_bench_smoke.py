"""The benches stay runnable: fail-over with two kills of the active controller node, jobs/s (single
nodes and clusters), CPU per order and scheduling latency with a few orders, held orders at tiny
sizes; sane figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import failover, held, jobs

pytestmark = pytest.mark.integration


@pytest.mark.timeout(90)
def test_failover_bench_measures_two_controller_kills(tmp_path: Path) -> None:
    # A single director keeps the topology small; only the controller is killed.
    result = failover.run(2, ("controller",), data_dir=tmp_path, shapes={"director": "single"}, log=print)

    controller = result["controller"]
    assert controller["kills"] == 2 and controller["failed"] == 0, controller
    for kill in controller["each"]:
        assert kill["victim"] != kill["new_active"], kill
        for figure in ("committed_s", "job_start_s", "heal_s"):
            assert kill[figure] is not None and 0 < kill[figure] < 10, (figure, kill)
    assert result["orders"]["jobs_started"] > 0, result["orders"]


@pytest.mark.timeout(90)
def test_jobs_bench_measures_throughput_cpu_and_scheduling_latency() -> None:
    result = jobs.run(orders=30, concurrency=10, spawns=30, parallel=2, idle=5, log=print)

    spawn = result["spawn"]
    assert spawn["sequential_per_s"] > 0 and spawn["parallel_per_s"] > 0, spawn
    assert spawn["call_to_first_line_ms"]["n"] == 30, spawn
    throughput = result["throughput"]
    assert throughput["not_finished"] == 0 and throughput["jobs_per_s"] > 0, throughput
    assert result["ratio_to_spawn_sequential"] > 0 and result["ratio_to_spawn_parallel"] > 0
    # Every process of the topology was measured, and the busy ones spent time (10 ms ticks).
    cpu = result["cpu_ms_per_order"]
    assert list(cpu) == ["joc", "controller", "director", "subagent-1", "subagent-2", "subagent-3"], cpu
    assert all(cpu[name] > 0 for name in ("joc", "controller", "director")), cpu
    cluster = result["cluster"]
    assert cluster["throughput"]["not_finished"] == 0, cluster
    nodes = [f"{kind}-{n}" for kind in ("controller", "director") for n in "abc"]
    assert set(nodes) <= set(cluster["cpu_ms_per_order"]), cluster["cpu_ms_per_order"]
    assert result["cluster_ratio"] == round(cluster["throughput"]["jobs_per_s"] / throughput["jobs_per_s"], 2)
    for label, orders in (("loaded", 30), ("idle", 5)):
        latency = result["scheduling_latency"][label]
        # Every order's ready event and its job's first line were found, and their times agree:
        # a job cannot start before its order was ready (1 ms of timestamp rounding aside).
        assert latency["n"] == orders and latency["unmatched"] == 0, (label, latency)
        assert latency["not_finished"] == 0, (label, latency)
        assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"] < 10_000, (label, latency)


@pytest.mark.timeout(90)
def test_held_bench_measures_jobs_per_s_memory_and_orders_due_at_once() -> None:
    result = held.run(
        sizes=(20, 60), due=30, orders=20, concurrency=10, parallel=2, timeout_s=30, lead_s=3, log=print
    )

    assert result["bare_spawns"]["runs"] == 30 and result["bare_spawns"]["sequential_s"] > 0, result
    assert result["none_held"]["throughput"]["not_finished"] == 0, result["none_held"]
    due = result["due_at_once"]
    # Each due order started once, none before its time (1 ms of clock reading aside).
    assert due["started"] == 30 and due["held_by_director_s"] is not None, due
    assert -0.001 <= due["first_started_s"] <= due["all_started_s"] < 30, due
    for n in (20, 60):
        step = result[str(n)]
        assert "over_limit" not in step, step
        assert step["added"] == (20 if n == 20 else 40) and step["throughput"]["not_finished"] == 0, step
        assert set(step["rss_bytes_per_held_order"]) == {"controller", "director"}, step
        assert step["ratio_to_none_held"] == result[f"ratio_{n}_to_0"] > 0, step
    assert result["held_orders_started"] == 0, result
