"""Transport security of every gRPC server and channel: mutual TLS, or plain text when asked for.

A process chooses its `Security` once (`use`, from its flags: `--tls-cert`, `--tls-key`,
`--tls-ca`, `--tls-peer`, or `--insecure`); `ostinato.rpc` builds every server and channel from
it. With TLS, both sides show a certificate of the CA: a server refuses a client without one, with
one of another CA or an expired one during the handshake (grpc logs why, as "Handshake failed"),
and then accepts only the identities it was given (`Peers`): a subject DN in RFC 4514 form (as
JS7's distinguished-names, e.g. `CN=director-a,O=ops`) or a subject alternative name (a DNS name
or an address). Refusals never reach a servicer and are logged with the identity presented.

Renewed certificate files take effect without a restart: a server reads them again for each new
connection when their modification time changed (connections already open keep theirs), and
clients (`generation`) open a new channel. A half-written or mismatched set of files is ignored
with a warning until it is complete.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ostinato import pki
from ostinato.errors import InvalidArgument, PermissionDenied

log = logging.getLogger(__name__)

# A refused peer that keeps trying is logged again after this long, with the count meanwhile.
REFUSAL_LOG_INTERVAL_S = 60.0
# Served to any client of the CA, whatever its identity: probes and `buf curl --list-services`.
OPEN_TO_ANY_PEER = ("grpc.health.", "grpc.reflection.")


@dataclass(frozen=True)
class Security:
    """How a process secures its connections. With TLS, `cert`/`key` are its own certificate
    (chain) and key, presented as server and as client, and `ca` the CA certificates it trusts;
    `peers` are the identities its servers accept (empty: any certificate of the CA)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    peers: tuple[str, ...] = ()
    insecure: bool = False

    def accepting(self, peers: Iterable[str]) -> Security:
        """The same certificate, for a server that accepts other peers."""
        return Security(self.cert, self.key, self.ca, tuple(peers), self.insecure)

    def subject(self) -> str:
        """This process's own identity: its certificate's subject ("" in plain text)."""
        return "" if self.insecure or self.cert is None else pki.subject_of(self.cert)

    def describe(self) -> str:
        if self.insecure:
            return "plain text (--insecure)"
        return f"mutual TLS as {self.subject()}"


INSECURE = Security(insecure=True)

_current: Security | None = None


def use(security: Security) -> None:
    """Chooses the process's security; every server and channel without one of its own uses it."""
    global _current
    if not security.insecure:
        _files(security)  # refuses unreadable or mismatched files now, not at the first call
    _current = security


def current() -> Security:
    if _current is None:
        raise RuntimeError("no transport security chosen: call ostinato.tls.use() (TLS files or --insecure)")
    return _current


# ---- certificate files, read again when they change


@dataclass(frozen=True)
class _Material:
    key: bytes
    chain: bytes
    ca: bytes
    stamp: tuple[tuple[int, int], ...]


class _Files:
    def __init__(self, security: Security) -> None:
        assert security.cert and security.key and security.ca
        self.paths = (security.cert, security.key, security.ca)
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self.material = self._read(self._seen)

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        stats = [os.stat(p) for p in self.paths]
        return tuple((s.st_mtime_ns, s.st_size) for s in stats)

    def fresh(self) -> _Material:
        """The current files; a set that fails to load is skipped until the files change again."""
        try:
            stamp = self._stamp()
        except OSError:
            return self.material
        if stamp == self._seen:
            return self.material
        with self._lock:
            if stamp != self._seen:
                self._seen = stamp
                try:
                    self.material = self._read(stamp)
                    log.info("TLS certificate files changed: %s now in use", self.paths[0])
                except InvalidArgument as e:
                    log.warning("TLS certificate files changed but cannot be used (keeping the old): %s", e)
        return self.material

    def _read(self, stamp: tuple[tuple[int, int], ...]) -> _Material:
        cert_file, key_file, ca_file = self.paths
        try:
            chain, key, ca = cert_file.read_bytes(), key_file.read_bytes(), ca_file.read_bytes()
        except OSError as e:
            raise InvalidArgument(str(e)) from None
        try:
            leaf = x509.load_pem_x509_certificates(chain)[0]
        except ValueError as e:
            raise InvalidArgument(f"{cert_file}: not a PEM certificate: {e}") from None
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as e:
            raise InvalidArgument(f"{key_file}: not an unencrypted PEM private key: {e}") from None
        if _public(private.public_key()) != _public(leaf.public_key()):
            raise InvalidArgument(f"{key_file} is not the key of {cert_file}")
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError as e:
            raise InvalidArgument(f"{ca_file}: not PEM CA certificates: {e}") from None
        return _Material(key, chain, ca, stamp)


def _public(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


_all_files: dict[Security, _Files] = {}
_all_files_lock = threading.Lock()


def _files(security: Security) -> _Files:
    key = Security(security.cert, security.key, security.ca)
    with _all_files_lock:
        if key not in _all_files:
            _all_files[key] = _Files(key)
        return _all_files[key]


def server_credentials(security: Security) -> grpc.ServerCredentials:
    """Requires a client certificate of the CA; re-reads changed files for each new connection."""
    files = _files(security)
    served = files.material

    def configuration(material: _Material) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.chain)], root_certificates=material.ca
        )

    def fetch() -> Any:
        # Runs on a grpc thread for each handshake: None keeps what is served.
        nonlocal served
        material = files.fresh()
        if material is served:
            return None
        served = material
        return configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        configuration(served), fetch, require_client_authentication=True
    )


def channel_credentials(security: Security) -> grpc.ChannelCredentials:
    material = _files(security).fresh()
    return grpc.ssl_channel_credentials(material.ca, material.key, material.chain)


def generation(security: Security) -> object:
    """Changes when the files change: a client holding a channel then opens a new one."""
    return None if security.insecure else _files(security).fresh().stamp


# ---- peer identities


@dataclass(frozen=True)
class Identity:
    subject: str  # RFC 4514
    names: tuple[str, ...]  # subject alternative names: DNS names, addresses, URIs, e-mails

    def __str__(self) -> str:
        return f"{self.subject} (SAN {', '.join(self.names)})" if self.names else self.subject


_identities: dict[bytes, Identity] = {}


def peer_identity(context: grpc.aio.ServicerContext) -> Identity | None:
    """The client's certificate identity (None on a plain-text connection)."""
    pem = next(iter(context.auth_context().get("x509_pem_cert", ())), b"")
    if not pem:
        return None
    found = _identities.get(pem)
    if found is None:
        if len(_identities) > 1024:
            _identities.clear()
        found = _identities[pem] = identity_of(pem)
    return found


def identity_of(pem: bytes) -> Identity:
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(n.value) for n in sans)
    except x509.ExtensionNotFound:
        names = ()
    return Identity(certificate.subject.rfc4514_string(), names)


def normalize_dn(text: str, field: str) -> str:
    """A DN in canonical RFC 4514 form (`CN=a, O=b` -> `CN=a,O=b`); errors name `field`."""
    try:
        return pki.parse_dn(text).rfc4514_string()
    except InvalidArgument as e:
        raise InvalidArgument(str(e), field=field) from None


def normalize(identity: str) -> str:
    """An identity as --tls-peer gives it: a DN in canonical form, or a SAN (lower case)."""
    text = identity.strip()
    if "=" in text:
        return normalize_dn(text, "--tls-peer")
    if not text:
        raise InvalidArgument("an empty identity", field="--tls-peer")
    return text.lower()


class Peers:
    """Which clients a server accepts, by the identity in their certificate."""

    def __init__(self, allowed: Iterable[str], service: str = "this service") -> None:
        self.allowed = frozenset(normalize(a) for a in allowed)
        self.service = service
        self._refused: dict[str, tuple[float, int]] = {}

    def accepts(self, identity: Identity) -> bool:
        if not self.allowed:
            return True
        return identity.subject in self.allowed or any(n.lower() in self.allowed for n in identity.names)

    def check(self, context: grpc.aio.ServicerContext, method: str) -> None:
        """Raises PermissionDenied for a client whose identity is not among the allowed."""
        if not self.allowed or method.startswith(OPEN_TO_ANY_PEER):
            return
        identity = peer_identity(context)
        if identity is not None and self.accepts(identity):
            return
        shown = str(identity) if identity is not None else "no certificate"
        self._log_refusal(shown, method, context.peer())
        raise PermissionDenied(f"{self.service} does not accept the certificate of {shown}")

    def _log_refusal(self, shown: str, method: str, address: str) -> None:
        now = time.monotonic()
        last, count = self._refused.get(shown, (0.0, 0))
        if last and now - last < REFUSAL_LOG_INTERVAL_S:
            self._refused[shown] = (last, count + 1)
            return
        if len(self._refused) > 1024:
            self._refused.clear()
        self._refused[shown] = (now, 0)
        log.warning(
            "refused %s from %s (%s): not among the accepted peers %s%s",
            shown,
            address,
            method,
            ", ".join(sorted(self.allowed)),
            f"; {count} more refusals since the last report" if count else "",
        )


# ---- command-line flags


def add_arguments(parser: argparse.ArgumentParser, peers: str | None) -> None:
    """--tls-cert/--tls-key/--tls-ca and --insecure; with `peers` (what the accepted peers are,
    for the help), --tls-peer too."""
    group = parser.add_argument_group("transport security (mutual TLS unless --insecure)")
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="this service's certificate (PEM chain)")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)")
    group.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="CA certificates that issued the peers' certificates"
    )
    if peers is not None:
        group.add_argument(
            "--tls-peer",
            action="append",
            default=[],
            metavar="IDENTITY",
            help=f"a client this service accepts (repeatable): {peers}; a certificate subject DN"
            " (RFC 4514, e.g. 'CN=joc,O=ops') or a subject alternative name",
        )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="plain text, no certificates: anyone who reaches the port is trusted (tests on one host only)",
    )


def from_args(args: argparse.Namespace, parser: argparse.ArgumentParser, peers_required: bool) -> Security:
    files = (args.tls_cert, args.tls_key, args.tls_ca)
    peers = tuple(getattr(args, "tls_peer", []))
    if args.insecure:
        if any(files) or peers:
            parser.error("--insecure: give no --tls-* options with it")
        return INSECURE
    if not all(files):
        parser.error(
            "--tls-cert, --tls-key and --tls-ca are required (mutual TLS; see 'ostinato pki'),"
            " or --insecure for plain text"
        )
    if peers_required and not peers:
        parser.error("--tls-peer: give the identities of the clients this service accepts")
    try:
        for peer in peers:
            normalize(peer)
        security = Security(args.tls_cert, args.tls_key, args.tls_ca, peers)
        _files(security)
    except InvalidArgument as e:
        parser.error(f"TLS: {e}")
    except OSError as e:
        parser.error(f"TLS: {e}")
    return security
