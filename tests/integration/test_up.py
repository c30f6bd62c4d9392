"""`ostinato up` runs the topology in the foreground, with mutual TLS by default (the CLI finds its
certificate in the data directory), restarts a service that exits, and stops all of it on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc

from gen.ostinato.common.v1 import cluster_pb2, cluster_pb2_grpc, items_pb2, order_pb2
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from ostinato import rpc, tls
from ostinato.topology import ROOT
from tests.integration.support import shell_job, wait_until

CONFIG = """
[joc]
listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
[controller]
listen = "127.0.0.1:0"
id = "ctl"
[director]
listen = "127.0.0.1:0"
agent_name = "agent-1"
[[subagents]]
id = "only"
listen = "127.0.0.1:0"
"""


def test_up_prints_addresses_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "up.toml").write_text(CONFIG)
    data = tmp_path / ".ostinato"  # the default data directory, in the working directory
    # As an operator's shell: no test CA for the CLI, it takes what `up` made.
    env = {k: v for k, v in os.environ.items() if k != "OSTINATO_TLS_DIR"}
    up = subprocess.Popen(
        [sys.executable, "-m", "ostinato.cli", "up", "--config", "up.toml"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert up.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while not any(line.startswith("web view: ") for line in lines):  # after the services
        line = up.stdout.readline()
        assert line and time.monotonic() < deadline, "".join(lines)
        lines.append(line)
    assert "ostinato is up" in "".join(lines)
    names = {line.split()[0] for line in lines if line.startswith("  ")}
    assert names == {"only", "director", "controller", "joc"}
    # Each service's pid and metrics address beside its gRPC address.
    services = [line.split() for line in lines if line.startswith("  ")]
    assert all(
        s[2] == "pid"
        and s[3].isdigit()
        and s[4] == "metrics"
        and re.fullmatch(r"https://127\.0\.0\.1:\d+/metrics", s[5])
        for s in services
    ), lines
    assert "mutual TLS" in "".join(lines)
    assert _processes_using(data), "the services should be running"
    joc = next(line.split()[1] for line in lines if line.strip().startswith("joc "))
    [web] = [line for line in lines if line.startswith("web view: ")]
    url = web.split()[2]
    assert url.startswith("https://127.0.0.1:") and url.endswith("/"), web
    assert f"log in with the token in {data.resolve() / 'joc' / 'root.token'}" in web
    # The web view answers with JOC's certificate of the CA that `up` made: the login page.
    context = ssl.create_default_context(cafile=str(data / "pki" / "ca.pem"))
    with urllib.request.urlopen(url + "login", context=context, timeout=10) as page:
        assert "Log in to ostinato" in page.read().decode()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ostinato.cli", "order", "list", "--joc", joc, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)

    listed = cli()  # its certificate: .ostinato/pki/cli.pem, found by itself
    assert listed.returncode == 0, listed.stderr
    plain = cli("--insecure")
    assert plain.returncode == 1 and f"cannot connect to JOC at {joc}" in plain.stderr, plain.stderr

    up.send_signal(signal.SIGTERM)
    out, _ = up.communicate(timeout=30)
    assert up.returncode == 0, out
    assert "stopping" in out
    # Each service stopped by itself (exit 0), and none is left behind.
    for name in ("only", "director", "controller", "joc"):
        assert f"{name} stopped (exit 0)" in out, out
    assert _processes_using(data) == []


def _processes_using(data: Path) -> list[int]:
    """Pids of processes whose command line names the data directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(data) in cmdline and "ostinato.cli" not in cmdline:
                found.append(int(entry.name))
    return found


CLUSTERS = """
[joc]
listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
[controller]
listen = "127.0.0.1:0"
cluster = "three"
[director]
listen = "127.0.0.1:0"
cluster = "three"
[[subagents]]
id = "only"
listen = "127.0.0.1:0"
"""


class Up:
    """`ostinato up` as a subprocess; its output is collected by a thread."""

    def __init__(self, tmp_path: Path, config: str) -> None:
        (tmp_path / "up.toml").write_text(config)
        self.data = tmp_path / "data"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ostinato.cli", "up", "--config", str(tmp_path / "up.toml")]
            + ["--data-dir", str(self.data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def channel(self, address: str, as_name: str) -> grpc.Channel:
        """A blocking channel with the certificate `up` made for `as_name` (a service, or "cli")."""
        pki = self.data / "pki"
        return rpc.sync_channel(
            address, tls.Security(pki / f"{as_name}.pem", pki / f"{as_name}.key", pki / "ca.pem")
        )

    def services(self) -> dict[str, tuple[str, int]]:
        """name -> (address, pid) as `up` printed them at start and at each restart."""
        found: dict[str, tuple[str, int]] = {}
        for line in list(self.lines):
            words = line.split()
            if line.startswith("  ") and len(words) >= 4 and words[2] == "pid":
                found[words[0]] = (words[1], int(words[3]))
            elif line.startswith("  ") and len(words) >= 6 and words[1] == "restarted":
                found[words[0]] = (words[3].rstrip(","), int(words[5]))
        return found


def node_role(up: Up, address: str, kind: str) -> int | None:
    # Controller nodes take JOC's certificate; director nodes a controller node's.
    with up.channel(address, "joc" if kind == "controller" else "controller-a") as channel:
        try:
            response = cluster_pb2_grpc.ClusterServiceStub(channel).GetClusterStatus(
                cluster_pb2.GetClusterStatusRequest(local_only=True), timeout=1
            )
        except grpc.RpcError:
            return None
        return int(response.status.nodes[0].role)


def active_node(up: Up, kind: str) -> str:
    """The node of `kind` that says it is active, once all three answer (one active)."""
    found: list[str] = []

    def whole() -> bool:
        nodes = {n: a for n, (a, _) in up.services().items() if n.startswith(f"{kind}-")}
        roles = {n: node_role(up, a, kind) for n, a in nodes.items()}
        found[:] = [n for n, r in roles.items() if r == cluster_pb2.NODE_ROLE_ACTIVE]
        passive = [n for n, r in roles.items() if r == cluster_pb2.NODE_ROLE_PASSIVE]
        return len(found) == 1 and len(passive) == 2

    wait_until(whole, timeout=60, what=f"the {kind} cluster whole with one active node")
    return found[0]


def test_up_restarts_killed_nodes_of_three_node_clusters_and_orders_go_on(tmp_path: Path) -> None:
    up = Up(tmp_path, CLUSTERS)
    try:
        wait_until(lambda: "joc" in up.services(), timeout=120, what="up started:\n" + up.text())
        with up.channel(up.services()["joc"][0], "cli") as channel:
            inventory = joc_pb2_grpc.InventoryServiceStub(channel)
            deployment = joc_pb2_grpc.DeploymentServiceStub(channel)
            orders = joc_pb2_grpc.OrderServiceStub(channel)
            workflow = {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("true")}}
            inventory.PutObject(
                joc_pb2.PutObjectRequest(
                    path="/up/w", type=items_pb2.ITEM_TYPE_WORKFLOW, json=json.dumps(workflow)
                ),
                timeout=30,
            )
            deployed = deployment.Deploy(joc_pb2.DeployRequest(paths=["/up/w"]), timeout=60)
            assert [d.status for d in deployed.deployments] == [joc_pb2.DEPLOYMENT_STATUS_DEPLOYED]

            def finished(order_id: str) -> None:
                orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/up/w", order_id=order_id), timeout=60)
                for response in orders.WatchOrder(joc_pb2.WatchOrderRequest(order_id=order_id), timeout=60):
                    order = response.order
                assert order.state == order_pb2.ORDER_STATE_FINISHED, order

            finished("before")
            for kind in ("controller", "director"):
                victim = active_node(up, kind)
                old_pid = up.services()[victim][1]
                os.kill(old_pid, signal.SIGKILL)
                finished(f"after-{kind}")
                wait_until(
                    lambda victim=victim, old_pid=old_pid: up.services()[victim][1] != old_pid,
                    timeout=60,
                    what=f"{victim} restarted:\n{up.text()}",
                )
                assert f"ostinato: {victim} exited with -9; restarting it in 1 s" in up.text()
                active_node(up, kind)  # all three answer again, the restarted one passive
            finished("at-the-end")
        assert up.process.poll() is None, up.text()
        up.process.send_signal(signal.SIGTERM)
        up.process.wait(timeout=60)
        assert up.process.returncode == 0, up.text()
    finally:
        if up.process.poll() is None:
            up.process.kill()
            up.process.wait()
        for pid in _processes_using(up.data):
            os.kill(pid, signal.SIGKILL)
