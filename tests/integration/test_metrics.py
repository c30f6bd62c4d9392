"""Prometheus metrics: a real Prometheus server (the Debian package) scrapes every service over
mutual TLS, and its HTTP API answers queries of ostinato's metrics."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gen.ostinato.common.v1 import order_pb2
from gen.ostinato.joc.v1 import joc_pb2
from ostinato.launch import free_port
from ostinato.topology import Topology, TopologyConfig
from tests.integration.support import Joc, eventually, shell_job


def prometheus_binary() -> str:
    """The Debian package's server, installed here when missing (the test machines run as root)."""
    found = shutil.which("prometheus")
    if found is None:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"],
            check=True,
            env=env,
        )
        found = shutil.which("prometheus")
    assert found, "the prometheus package did not install a prometheus binary"
    return found


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[Topology]:
    topology = Topology(tmp_path / "t", TopologyConfig.ephemeral(subagents=1))
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()


def scrape_config(topology: Topology, storage: Path) -> str:
    cli = topology.security("cli")
    jobs = []
    for name, launched in topology.services.items():
        assert launched.metrics_url.startswith("https://"), (name, launched.metrics_url)
        target = urllib.parse.urlsplit(launched.metrics_url).netloc
        jobs.append(
            f"""  - job_name: {name}
    scheme: https
    scrape_interval: 1s
    tls_config: {{ca_file: {cli.ca}, cert_file: {cli.cert}, key_file: {cli.key}}}
    static_configs: [{{targets: ["{target}"]}}]
"""
        )
    return "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n" + "".join(jobs)


def query(api: str, promql: str) -> list[dict]:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = json.load(answer)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def value(api: str, promql: str) -> float | None:
    result = query(api, promql)
    return float(result[0]["value"][1]) if result else None


async def test_prometheus_scrapes_every_service_and_answers_queries(
    metered: Topology, tmp_path: Path
) -> None:
    binary = prometheus_binary()
    channel = metered.channel(metered.joc_address)
    joc = Joc.connect(channel)
    await joc.deploy_workflow(
        "/metered",
        {"instructions": [{"execute": {"jobName": "j"}}], "jobs": {"j": shell_job("echo metered")}},
    )
    await joc.deploy_workflow(
        "/held",
        {
            "instructions": [{"prompt": {"question": "'now?'"}}, {"execute": {"jobName": "j"}}],
            "jobs": {"j": shell_job("true")},
        },
    )
    for _ in range(2):
        added = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/metered"))
        assert (await joc.wait_until_ended(added.order_id)).state == order_pb2.ORDER_STATE_FINISHED
    held = await joc.orders.AddOrder(joc_pb2.AddOrderRequest(workflow_path="/held"))
    await joc.wait_for(held.order_id, "order_prompted")
    await channel.close()

    config = tmp_path / "prometheus.yml"
    config.write_text(scrape_config(metered, tmp_path / "tsdb"))
    port = free_port()
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115 - the child holds it
    )
    api = f"http://127.0.0.1:{port}"
    try:

        def scraped_all() -> bool:
            try:
                up = query(api, "up")
            except (urllib.error.URLError, ConnectionError):
                return False
            return len(up) == len(metered.services) and all(r["value"][1] == "1" for r in up)

        await eventually(scraped_all, timeout=60, what="every service scraped (up == 1)")
        # The question of the issue: how many orders are in which state.
        assert value(api, 'ostinato_orders{job="controller", state="prompting"}') == 1
        assert value(api, 'ostinato_orders{job="controller", state="finished"}') == 0
        assert value(api, 'ostinato_orders{job="director", state="prompting"}') == 0  # the controller's
        assert value(api, 'ostinato_order_transitions_total{job="controller", event="order_finished"}') == 2
        durations = 'ostinato_job_duration_seconds_count{job="director", workflow="/metered", job_name="j",'
        assert value(api, durations + ' outcome="succeeded"}') == 2
        assert value(api, 'ostinato_cluster_role{job="controller", role="active"}') == 1
        assert value(api, 'ostinato_subagent_connected{job="director", subagent="subagent-1"}') == 1
        assert value(api, 'ostinato_processes_started_total{job="subagent-1"}') == 2  # one waits
        assert value(api, 'ostinato_director_sessions{job="subagent-1"}') == 1
        assert value(api, 'ostinato_deployments_total{job="joc", status="deployed"}') == 2
        add_order = "/ostinato.joc.v1.OrderService/AddOrder"
        assert value(api, f'ostinato_grpc_requests_total{{job="joc", method="{add_order}", code="OK"}}') == 3
        assert value(api, 'ostinato_journal_commit_seconds_count{job="controller"}') > 0
    finally:
        server.terminate()
        server.wait(10)


def test_metrics_refuse_clients_without_a_certificate_of_the_ca(metered: Topology) -> None:
    url = metered.services["controller"].metrics_url
    anonymous = ssl.create_default_context(cafile=str(metered.security("cli").ca))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url, context=anonymous, timeout=5).read()
    cli = metered.security("cli")
    known = ssl.create_default_context(cafile=str(cli.ca))
    known.load_cert_chain(str(cli.cert), str(cli.key))
    text = urllib.request.urlopen(url, context=known, timeout=5).read().decode()
    assert 'ostinato_orders{state="fresh"} 0.0' in text
