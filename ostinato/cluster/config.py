"""A controller or director node's configuration and the command-line flags it comes from."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ostinato import signing, tls
from ostinato.cluster.members import Cluster, Member
from ostinato.errors import InvalidArgument
from ostinato.journal.replicated import Timing
from ostinato.launch import free_port


@dataclass
class NodeConfig:
    data_dir: Path
    cluster: Cluster = field(
        default_factory=lambda: Cluster.single("127.0.0.1:0", f"127.0.0.1:{free_port()}")
    )
    name: str = "primary"
    cluster_password: str | None = None
    # Whose signatures deployed items may carry; None only from code (tests of other parts).
    trust: signing.Verifier | None = None
    timing: Timing = field(default_factory=Timing)

    @property
    def member(self) -> Member:
        return self.cluster.member(self.name)


def add_node_arguments(parser: argparse.ArgumentParser, peers: str) -> None:
    """The flags of a controller or director node; `peers` says which clients it accepts."""
    parser.add_argument("--listen", default="127.0.0.1:0", help="gRPC address of a single node (port 0: any)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument(
        "--raft-address", help="HOST:PORT of a single node's journal replication (default: a free port)"
    )
    parser.add_argument(
        "--cluster",
        type=Path,
        help="JSON file naming the cluster's nodes (see ostinato/cluster/members.py); needs --node",
    )
    parser.add_argument("--node", help="this node's name in --cluster")
    parser.add_argument(
        "--cluster-password",
        help="journal replication password; the same on every node of a cluster"
        " (default: made and kept in the data dir, which suits a single node only)",
    )
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="FILE",
        help="PEM certificates (signers' or CAs') whose signatures deployed items may carry (repeatable);"
        " without any, every signed item is rejected",
    )
    parser.add_argument(
        "--trust-pgp",
        action="append",
        default=[],
        metavar="FILE",
        help="OpenPGP public keys (armored or binary) whose signatures (.asc) deployed items may carry"
        " (repeatable)",
    )
    tls.add_arguments(parser, peers=f"{peers} and the other nodes of its cluster")


def node_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> NodeConfig:
    try:
        trust = signing.Verifier.from_files(args.trust, args.trust_pgp)
    except InvalidArgument as e:
        parser.error(f"--trust/--trust-pgp: {e}")
    if args.cluster is None:
        if args.node:
            parser.error("--node needs --cluster")
        cluster = Cluster.single(args.listen, args.raft_address or f"127.0.0.1:{free_port()}")
        name = cluster.members[0].name
    else:
        if not args.node:
            parser.error("--cluster needs --node NAME")
        if len(cluster_members := _load(args.cluster, parser).members) > 1 and not args.cluster_password:
            parser.error("--cluster-password is required for a cluster of several nodes (the same on each)")
        cluster = Cluster(cluster_members)
        name = args.node
        try:
            cluster.member(name)
        except InvalidArgument as e:
            parser.error(f"--node: {e}")
    return NodeConfig(
        data_dir=args.data_dir,
        cluster=cluster,
        name=name,
        cluster_password=args.cluster_password,
        trust=trust,
    )


def _load(path: Path, parser: argparse.ArgumentParser) -> Cluster:
    try:
        return Cluster.load(path)
    except InvalidArgument as e:
        parser.error(f"--cluster: {e}")
