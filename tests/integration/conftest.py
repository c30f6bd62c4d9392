"""Fixtures that start real service processes on loopback ports chosen by the system."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ostinato import rpc
from ostinato.topology import Topology, TopologyConfig
from tests.integration.support import Joc


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    topo = Topology(tmp_path / "topology", TopologyConfig.ephemeral())
    topo.start()
    try:
        yield topo
    finally:
        topo.stop()
        failed = [n for n, s in topo.services.items() if s.process.returncode not in (0, -9, None)]
        for name in failed:
            print(f"===== {name} log\n{topo.services[name].log_text()[-4000:]}")


@pytest.fixture
async def joc(topology: Topology) -> AsyncIterator[Joc]:
    channel = rpc.channel(topology.joc_address)
    yield Joc.connect(channel)
    await channel.close()
