"""Mutual TLS for tests that start services one by one (a Topology makes its own): one CA per test
session, a certificate per name on first use, and the flags and channels that go with them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import grpc

from ostinato import pki, rpc, tls


class Certificates:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        pki.init(directory, common_name="test CA", organization="ostinato tests")
        self._issued: dict[str, pki.Issued] = {}

    @property
    def ca(self) -> Path:
        return self.dir / pki.CA_CERT

    def issued(self, name: str) -> pki.Issued:
        if name not in self._issued:
            self._issued[name] = pki.issue(self.dir, name, ["localhost", "127.0.0.1"])
        return self._issued[name]

    def subject(self, name: str) -> str:
        return self.issued(name).subject

    def security(self, name: str, peers: Iterable[str] = ()) -> tls.Security:
        """`name`'s certificate; as a server, accepting the certificates of `peers` (names)."""
        issued = self.issued(name)
        return tls.Security(issued.cert, issued.key, self.ca, tuple(self.subject(p) for p in peers))

    def args(self, name: str, peers: Iterable[str] = ()) -> list[str]:
        """A service's flags: its certificate, and the names of the peers it accepts."""
        issued = self.issued(name)
        args = ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key), "--tls-ca", str(self.ca)]
        return args + [a for p in peers for a in ("--tls-peer", self.subject(p))]

    def cli_args(self, name: str = "cli") -> list[str]:
        issued = self.issued(name)
        return ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key), "--tls-ca", str(self.ca)]

    def channel(self, address: str, as_name: str = "cli") -> grpc.aio.Channel:
        return rpc.channel(address, self.security(as_name))

    def sync_channel(self, address: str, as_name: str = "cli") -> grpc.Channel:
        return rpc.sync_channel(address, self.security(as_name))
