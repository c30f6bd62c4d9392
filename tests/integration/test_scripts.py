"""examples/scripts: deploy, add an order, watch it and read its log with `buf curl` and `jq` only,
over mutual TLS, against a real topology."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ostinato.topology import ROOT, Topology

SCRIPTS = ROOT / "examples" / "scripts"


def run(topology: Topology, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OSTINATO_JOC": topology.joc_address,
        "OSTINATO_TLS_DIR": str(topology.tls_dir),
        "BUF": str(ROOT / "node_modules" / ".bin" / "buf"),
    }
    return subprocess.run(
        [str(SCRIPTS / script), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_scripts_deploy_add_watch_and_read_the_log(topology: Topology, tmp_path: Path) -> None:
    workflow = tmp_path / "echo.workflow.json"
    workflow.write_text(
        '{"instructions": [{"execute": {"jobName": "say"}}], "jobs": {"say": {"agent": "agent-1",'
        ' "executable": {"shellScript": {"script": "echo \\"said: $WORDS\\"; echo oops >&2",'
        ' "env": {"WORDS": "$words"}}}}}}'
    )
    deployed = run(topology, "deploy.sh", "/scripts/echo", str(workflow))
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout == "deployed controller /scripts/echo\n"

    added = run(topology, "add-order.sh", "/scripts/echo", "words=from a shell")
    assert added.returncode == 0, added.stderr
    order_id = added.stdout.strip()
    assert order_id

    watched = run(topology, "watch-order.sh", order_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    kinds = [line.split()[1] for line in watched.stdout.splitlines()]
    assert kinds[0] == "orderAdded" and kinds[-1] == "orderFinished", watched.stdout
    assert "orderProcessed" in kinds

    log = run(topology, "order-log.sh", order_id)
    assert log.returncode == 0, log.stderr
    # stdout and stderr are two pipes: their lines come in either order.
    assert sorted(log.stdout.splitlines()) == ["oops", "said: from a shell"], log.stdout


def test_scripts_report_refusals_with_their_code(topology: Topology, tmp_path: Path) -> None:
    broken = tmp_path / "broken.workflow.json"
    broken.write_text('{"instructions": [{"execute": {"jobName": "missing"}}]}')
    deployed = run(topology, "deploy.sh", "/scripts/broken", str(broken))
    assert deployed.returncode == 1
    assert deployed.stderr.startswith("INVALID_ARGUMENT: instructions[0].execute.jobName: unknown job"), (
        deployed.stderr
    )

    added = run(topology, "add-order.sh", "/scripts/none")
    assert added.returncode == 1
    assert added.stderr.startswith("NOT_FOUND: "), added.stderr
    assert "/scripts/none" in added.stderr

    watched = run(topology, "watch-order.sh", "no-such-order")
    assert watched.returncode == 1
    assert watched.stderr.startswith("NOT_FOUND: "), watched.stderr
