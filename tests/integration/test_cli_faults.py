"""The CLI as a script sees it: a reader that stops early, options before the command, and every
error one line on stderr, against a whole topology."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ostinato.topology import ROOT, Topology
from tests.integration.support import Joc, shell_job

pytestmark = pytest.mark.integration

# Prints a line every 20 ms for a while: the CLI is still writing when its reader has gone.
CHATTY = "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); sleep 0.02; done"


def ostinato(*args: str) -> list[str]:
    return [sys.executable, "-m", "ostinato.cli", *args]


def read_then_close(args: list[str], lines: int) -> tuple[list[str], int, str]:
    """Runs the CLI, reads `lines` lines of its output and closes the pipe, as `| head` does."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None and process.stderr is not None
    got = [process.stdout.readline() for _ in range(lines)]
    process.stdout.close()
    code = process.wait(timeout=60)
    return got, code, process.stderr.read()


async def test_a_reader_that_stops_early_ends_the_cli_quietly(topology: Topology, joc: Joc) -> None:
    await joc.deploy_workflow(
        "/cli/chatty", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job(CHATTY)}}
    )
    address = topology.joc_address
    got, code, err = read_then_close(
        ostinato(
            "order",
            "add",
            "/cli/chatty",
            "--id",
            "chatty-1",
            "--wait",
            "--joc",
            address,
            *topology.cli_args(),
        ),
        2,
    )
    assert got[0] == "chatty-1\n" and (code, err) == (141, ""), err
    await joc.wait_until_ended("chatty-1")
    got, code, err = read_then_close(
        ostinato("order", "logs", "chatty-1", "--joc", address, *topology.cli_args()), 1
    )
    assert got == ["line 0\n"] and (code, err) == (141, ""), err


async def test_joc_options_go_before_or_after_the_command(topology: Topology, joc: Joc) -> None:
    await joc.deploy_workflow(
        "/cli/quick", {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
    )
    address = topology.joc_address
    before = subprocess.run(
        ostinato(
            "--joc",
            address,
            *topology.cli_args(),
            "--reason",
            "test",
            "order",
            "add",
            "/cli/quick",
            "--id",
            "opt-1",
            "--wait",
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert before.returncode == 0 and before.stdout.startswith("opt-1\n"), before.stderr
    after = subprocess.run(
        ostinato("order", "show", "opt-1", f"--joc={address}", *topology.cli_args()),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert after.returncode == 0 and "finished" in after.stdout, after.stderr


async def test_errors_are_one_line_on_stderr_with_the_fields_as_given(topology: Topology, joc: Joc) -> None:
    address = topology.joc_address
    for args, expected in [
        (
            ("order", "add", "/cli/nothing-here"),
            "ostinato: error: workflow_path: unknown workflow '/cli/nothing-here'\n",
        ),
        (
            ("order", "cancel", "no-such-order"),
            "ostinato: error: no-such-order: cancel refused: no order no-such-order\n",
        ),
        (
            ("order", "add", "/cli/x", "--arg", "a=" + "x" * 70_000),
            "ostinato: error: arguments.a: a value of 70,000 bytes, more than the limit of 65,536 bytes\n",
        ),
    ]:
        started = time.monotonic()
        result = subprocess.run(
            ostinato("--joc", address, *topology.cli_args(), *args),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert (result.returncode, result.stdout, result.stderr) == (1, "", expected), args
        assert time.monotonic() - started < 20
    # Nothing of the refused ones was stored.
    listed = subprocess.run(
        ostinato("order", "list", "--joc", address, *topology.cli_args()),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert listed.returncode == 0 and listed.stdout.splitlines()[1:] == [], listed.stdout
