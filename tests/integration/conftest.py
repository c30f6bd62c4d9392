"""Fixtures that start real service processes on loopback ports chosen by the system."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ostinato.topology import Topology, TopologyConfig
from tests.integration.certificates import Certificates
from tests.integration.support import Joc, running


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    with running(tmp_path / "topology", TopologyConfig.ephemeral()) as topo:
        yield topo


@pytest.fixture
async def joc(topology: Topology) -> AsyncIterator[Joc]:
    channel = topology.channel(topology.joc_address)
    yield Joc.connect(channel)
    await channel.close()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A test CA and certificates by name, for services a test starts one by one."""
    return Certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="session", autouse=True)
def cli_certificate(certificates: Certificates) -> Iterator[None]:
    """`ostinato` commands the tests run find the test CA's "cli" certificate (cli.pem, cli.key,
    ca.pem) through $OSTINATO_TLS_DIR, unless given --tls-dir (a topology's) or other flags."""
    certificates.issued("cli")
    before = os.environ.get("OSTINATO_TLS_DIR")
    os.environ["OSTINATO_TLS_DIR"] = str(certificates.dir)
    yield
    if before is None:
        del os.environ["OSTINATO_TLS_DIR"]
    else:
        os.environ["OSTINATO_TLS_DIR"] = before
