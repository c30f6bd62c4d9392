"""Who a browser (or a script) is: the same account, roles and audit name as on gRPC.

A request names its account as a gRPC call does, with a token (the login form keeps it in a
cookie; scripts send `Authorization: Bearer TOKEN`), or by a TLS client certificate of JOC's CA
whose subject was given to an account (`ostinato account add NAME --cert-subject DN`). The web
view hands both to JOC's own Authenticator as the metadata and auth context of a call, so roles,
--require-auth and the audit log apply exactly as on gRPC, and it calls the same guarded servicer
methods a gRPC client reaches.

One difference, on purpose: gRPC refuses a client without a certificate of the CA during the TLS
handshake, while a browser without one still reaches this port (the certificate is optional here,
so operators need not install one). Such a browser is a caller gRPC would have refused, so it must
log in with a token whatever --require-auth says: only a caller that showed a certificate of the
CA may act as root without a token. In plain text (--insecure) gRPC trusts anyone, and so does
this port.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from aiohttp import web

from joc_svc import auth
from ostinato import tls
from ostinato.errors import Unauthenticated

TOKEN_COOKIE = "ostinato_token"
# How long a servicer called for a page may take (its calls to the controller within it).
CALL_SECONDS = 30.0


class WebContext:
    """What JOC's servicers and its Authenticator read of a gRPC call, for a web request: the
    metadata (the token as `authorization`), the client certificate, the time left."""

    def __init__(self, token: str | None, certificate_pem: bytes | None, peer: str, reason: str = "") -> None:
        self._metadata: list[tuple[str, str]] = []
        if token:
            self._metadata.append(("authorization", f"Bearer {token}"))
        if reason:
            self._metadata.append((auth.REASON_METADATA, reason))
        self._certificate = certificate_pem
        self._peer = peer
        self._deadline = time.monotonic() + CALL_SECONDS

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return tuple(self._metadata)

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._certificate]} if self._certificate else {}

    def time_remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    @property
    def grpc(self) -> grpc.aio.ServicerContext:
        """As the servicers' signature has it (they use only the methods above)."""
        return cast(grpc.aio.ServicerContext, self)


@dataclass(frozen=True)
class Who:
    caller: auth.Caller
    context: WebContext
    via: str  # "token", "certificate" or "plain text"

    def may(self, permission: auth.Permission) -> bool:
        return permission in self.caller.permissions


class NeedsLogin(Exception):
    """The request names no account it may act as: log in (the message says why, if anything)."""


def request_token(request: web.Request) -> str | None:
    """The token a script sends (`Authorization: Bearer TOKEN`) or the login cookie holds."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NeedsLogin("the Authorization header must be 'Bearer TOKEN'")
        return token.strip()
    return request.cookies.get(TOKEN_COOKIE) or None


def client_certificate(request: web.Request, peers: tls.Peers) -> tuple[bytes | None, tls.Identity | None]:
    """The TLS client certificate (PEM) the browser showed, if JOC accepts it: verified against
    the CA in the handshake, and among --tls-peer when that is given."""
    transport = request.transport
    ssl_object: Any = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None, None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None, None
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    identity = tls.identity_of(pem)
    if not peers.accepts(identity):
        return None, identity
    return pem, identity


async def who(
    request: web.Request,
    authenticator: auth.Authenticator,
    peers: tls.Peers,
    plain_text: bool,
    reason: str = "",
) -> Who:
    """The caller of a request; NeedsLogin when it must log in first."""
    token = request_token(request)
    certificate, _ = client_certificate(request, peers)
    if token is None and certificate is None and not plain_text:
        raise NeedsLogin("")
    context = WebContext(token, certificate, request.remote or "", reason)
    try:
        caller = await authenticator.caller(context.grpc)
    except Unauthenticated as e:
        raise NeedsLogin(e.message) from None
    via = "token" if token else "certificate" if certificate else "plain text"
    return Who(caller, context, via)
