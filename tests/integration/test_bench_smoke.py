"""The benches stay runnable: fail-over with two kills of the active controller node, jobs/s and
scheduling latency with a few orders; sane figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import failover, jobs

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
def test_jobs_bench_measures_throughput_and_scheduling_latency() -> None:
    result = jobs.run(orders=30, concurrency=10, spawns=30, parallel=2, idle=5, log=print)

    spawn = result["spawn"]
    assert spawn["sequential_per_s"] > 0 and spawn["parallel_per_s"] > 0, spawn
    assert spawn["call_to_first_line_ms"]["n"] == 30, spawn
    throughput = result["throughput"]
    assert throughput["not_finished"] == 0 and throughput["jobs_per_s"] > 0, throughput
    assert result["ratio_jobs_to_spawn_sequential"] > 0 and result["ratio_jobs_to_spawn_parallel"] > 0
    for label, orders in (("loaded", 30), ("idle", 5)):
        latency = result["scheduling_latency"][label]
        # Every order's ready event and its job's first line were found, and their times agree:
        # a job cannot start before its order was ready (1 ms of timestamp rounding aside).
        assert latency["n"] == orders and latency["unmatched"] == 0, (label, latency)
        assert latency["not_finished"] == 0, (label, latency)
        assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"] < 10_000, (label, latency)
