"""The fail-over bench stays runnable: two kills of the active controller node, sane figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import failover

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
