"""What controller and director nodes share around their core: command-line flags, opening the
journal, background tasks, the wake-up loop for timed work, serving and stopping."""

from __future__ import annotations

import argparse
import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gen.ostinato.common.v1 import events_pb2
from ostinato import rpc, service, signing
from ostinato.errors import InvalidArgument
from ostinato.journal.replicated import Journal, cluster_password
from ostinato.journal.shell import JournalShell, now_ms
from ostinato.launch import free_port

log = logging.getLogger(__name__)


@dataclass
class NodeConfig:
    data_dir: Path
    listen: str = "127.0.0.1:0"
    raft_address: str = ""
    raft_partners: list[str] = field(default_factory=list)
    cluster_password: str | None = None
    # Whose signatures deployed items may carry; None only from code (tests of other parts).
    trust: signing.Verifier | None = None


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:0", help="gRPC address (port 0: any free port)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument(
        "--raft-address", help="HOST:PORT of this node's journal replication (default: a free port)"
    )
    parser.add_argument(
        "--cluster-password", help="journal replication password (default: made and kept in data dir)"
    )
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="FILE",
        help="PEM certificates (signers' or CAs') whose signatures deployed items may carry (repeatable);"
        " without any, every signed item is rejected",
    )


def node_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> NodeConfig:
    try:
        trust = signing.Verifier.from_files(args.trust)
    except InvalidArgument as e:
        parser.error(f"--trust: {e}")
    return NodeConfig(
        data_dir=args.data_dir,
        listen=args.listen,
        raft_address=args.raft_address or f"127.0.0.1:{free_port()}",
        cluster_password=args.cluster_password,
        trust=trust,
    )


class JournaledNode(ABC):
    def __init__(self, node: NodeConfig) -> None:
        self.node = node
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()

    async def open_journal(self, new_state: Callable[[], Any]) -> Any:
        """Waits until this node is active; returns its working state."""
        self.journal = Journal(
            data_dir=self.node.data_dir / "journal",
            self_address=self.node.raft_address,
            partners=self.node.raft_partners,
            password=cluster_password(self.node.data_dir, self.node.cluster_password),
            new_state=new_state,
        )
        state = await self.journal.wait_active()
        self.shell = JournalShell(self.journal, state)
        self.shell.on_commit(self._committed)
        return state

    @property
    def term(self) -> int:
        return self.journal.term

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        self._tasks.append(asyncio.create_task(coroutine, name=name))

    def wake(self) -> None:
        self._wake.set()

    def _committed(self, events: list[events_pb2.Event]) -> None:
        self.on_commit(events)
        self._wake.set()

    @abstractmethod
    def on_commit(self, events: list[events_pb2.Event]) -> None:
        """Runs after each commit: wake whatever acts on committed events."""

    async def wake_loop(
        self, next_wake_ms: Callable[[], int | None], on_wake: Callable[[int | None], Awaitable[None]]
    ) -> None:
        """Calls on_wake(due) after each commit or `wake()`, and when the core's next due time
        (e.g. an order scheduled for later) comes."""
        while True:
            due = next_wake_ms()
            delay = 60.0 if due is None else max(0.0, (due - now_ms()) / 1000)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(delay, 60.0))
            except TimeoutError:
                pass
            await on_wake(due)

    @abstractmethod
    async def start(self) -> None:
        """Opens the journal (waiting until active) and starts the node's drivers."""

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.journal.close()


async def serve_node(
    name: str, node: JournaledNode, registration: tuple[Callable[..., None], Any, str], stop: asyncio.Event
) -> None:
    """Starts the node (its journal first: it serves only once active), then its gRPC server,
    until `stop`."""
    await node.start()
    server = await rpc.start_server(node.node.listen, [registration])
    service.announce(name, server.address, node.node.data_dir)
    await stop.wait()
    await server.stop(1.0)
    await node.stop()
