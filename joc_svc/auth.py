"""Accounts, roles and permissions; who is calling.

A caller names its account with the metadata `authorization: Bearer TOKEN`, or by its TLS client
certificate when an account was given that certificate's subject (`--cert-subject`; a token, when
given, names the account all the same). JOC keeps only the SHA-256 of each token (tokens are 256
random bits, so a plain hash is as good as a slow one). Roles grant permissions; every RPC of
JOC's services needs one permission (the table METHODS; a method missing from it makes JOC refuse
to start, so nothing is open by oversight).

Without `--require-auth` (the local default) a call naming no account acts as the `root` account,
named in the audit log by the `x-ostinato-account` metadata the CLI sends; a call with a token is
checked all the same. The `root` account exists from the first start; its first token is written
to DATA_DIR/root.token (mode 0600) for when authentication is switched on.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import hashlib
import inspect
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf.descriptor import ServiceDescriptor

from gen.ostinato.joc.v1 import joc_pb2
from joc_svc import naming
from joc_svc.schema import account_tokens, accounts
from ostinato import tls
from ostinato.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Unauthenticated

ROOT = "root"
ACCOUNT_METADATA = "x-ostinato-account"
REASON_METADATA = "x-ostinato-reason"
TOKEN_CACHE_SECONDS = 5.0


class Permission(enum.Enum):
    VIEW = "view"
    EDIT = "edit inventory"
    DEPLOY = "deploy"
    ORDERS = "manage orders"
    ADMIN = "manage accounts"
    ANY = "be authenticated"  # any account


R = joc_pb2.Role
ROLE_PERMISSIONS: dict[int, frozenset[Permission]] = {
    R.ROLE_VIEWER: frozenset({Permission.VIEW}),
    R.ROLE_EDITOR: frozenset({Permission.VIEW, Permission.EDIT}),
    R.ROLE_DEPLOYER: frozenset({Permission.VIEW, Permission.DEPLOY}),
    R.ROLE_OPERATOR: frozenset({Permission.VIEW, Permission.ORDERS}),
    R.ROLE_ADMIN: frozenset(Permission),
}

P = Permission
METHODS: dict[str, Permission] = {
    "InventoryService.PutObject": P.EDIT,
    "InventoryService.RemoveObject": P.EDIT,
    "InventoryService.MoveObject": P.EDIT,
    "InventoryService.GetObject": P.VIEW,
    "InventoryService.ListObjects": P.VIEW,
    "InventoryService.ValidateObjects": P.VIEW,
    "DeploymentService.Deploy": P.DEPLOY,
    "DeploymentService.Redeploy": P.DEPLOY,
    "DeploymentService.Release": P.DEPLOY,
    "DeploymentService.ExportForSigning": P.DEPLOY,
    "DeploymentService.ImportSigned": P.DEPLOY,
    "DeploymentService.ListDeployments": P.VIEW,
    "OrderService.AddOrder": P.ORDERS,
    "OrderService.CommandOrders": P.ORDERS,
    "OrderService.ListOrders": P.VIEW,
    "OrderService.GetOrder": P.VIEW,
    "OrderService.WatchOrder": P.VIEW,
    "OrderService.GetOrderLog": P.VIEW,
    "DailyPlanService.GetPlanSettings": P.VIEW,
    "DailyPlanService.CalendarDates": P.VIEW,
    "DailyPlanService.PreviewPlan": P.VIEW,
    "DailyPlanService.ExplainPlan": P.VIEW,
    "DailyPlanService.ListPlannedOrders": P.VIEW,
    "DailyPlanService.PlanProjections": P.VIEW,
    "DailyPlanService.GeneratePlan": P.ORDERS,
    "DailyPlanService.SubmitPlan": P.ORDERS,
    "DailyPlanService.CancelPlan": P.ORDERS,
    "DailyPlanService.DeletePlan": P.ORDERS,
    "ClusterService.GetClusterStatus": P.VIEW,
    "ClusterService.Switchover": P.ORDERS,  # operators run production: orders and fail-over
    "ClusterService.GetJocStatus": P.VIEW,
    "ClusterService.JocSwitchover": P.ORDERS,
    "AuditService.ListAuditEntries": P.VIEW,
    "AccountService.PutAccount": P.ADMIN,
    "AccountService.ListAccounts": P.ADMIN,
    "AccountService.RemoveAccount": P.ADMIN,
    "AccountService.CreateToken": P.ADMIN,
    "AccountService.SetSigningKey": P.ANY,  # own account; others' need ADMIN (checked inside)
    "AccountService.GetCaller": P.ANY,
}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "ost_" + secrets.token_urlsafe(32)


def role_word(role: int) -> str:
    return naming.enum_word(joc_pb2.Role, role)


def permissions_of(roles: Iterable[int]) -> frozenset[Permission]:
    granted: set[Permission] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS.get(role, frozenset())
    return frozenset(granted | {Permission.ANY})


@dataclass(frozen=True, slots=True)
class AccountRow:
    name: str
    roles: tuple[int, ...]
    signing_key: str | None
    signing_certificate: str | None
    created_at: datetime
    token_count: int = 0
    cert_subject: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    account: str  # the account whose permissions apply and whose key signs (medium)
    shown_as: str  # the audit log's name: the account, or what an unauthenticated caller says
    permissions: frozenset[Permission]
    reason: str = ""

    def require(self, permission: Permission, what: str = "") -> None:
        if permission not in self.permissions:
            raise PermissionDenied(
                f"account {self.account} may not {permission.value}{f' ({what})' if what else ''}"
            )


_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("ostinato_joc_caller")


def current() -> Caller:
    """The caller of the RPC being served (set by `guard`)."""
    return _current.get()


class AccountStore:
    """Accounts and token hashes in JOC's database (the Store's engine and write lock)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.engine: sa.Engine = store.engine

    def get(self, name: str) -> AccountRow | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(accounts).where(accounts.c.name == name)).first()
            return _account(r, _token_count(conn, name)) if r else None

    def one(self, name: str) -> AccountRow:
        row = self.get(name)
        if row is None:
            raise NotFound(f"no account {name}", field="account")
        return row

    def list(self) -> list[AccountRow]:
        with self.engine.connect() as conn:
            return [
                _account(r, _token_count(conn, r.name))
                for r in conn.execute(sa.select(accounts).order_by(accounts.c.name))
            ]

    def put(
        self,
        name: str,
        roles: Iterable[int],
        now: datetime,
        set_cert_subject: bool = False,
        cert_subject: str | None = None,
    ) -> AccountRow:
        """Creates the account or sets its roles; with `set_cert_subject`, also the TLS client
        certificate subject (normalised RFC 4514, None: none) that names it."""
        _check_name(name)
        words = ",".join(sorted({role_word(r) for r in roles}))
        values: dict[str, Any] = {"roles": words}
        if set_cert_subject:
            values["cert_subject"] = cert_subject
        with self.store._write() as conn:
            if cert_subject is not None:
                holder = conn.execute(
                    sa.select(accounts.c.name).where(accounts.c.cert_subject == cert_subject)
                ).scalar_one_or_none()
                if holder is not None and holder != name:
                    raise AlreadyExists(
                        f"{cert_subject} names account {holder} already", field="cert_subject"
                    )
            if conn.execute(sa.select(accounts.c.name).where(accounts.c.name == name)).first():
                conn.execute(accounts.update().where(accounts.c.name == name).values(**values))
            else:
                conn.execute(accounts.insert().values(name=name, created_at=now, **values))
        return self.one(name)

    def remove(self, name: str) -> None:
        if name == ROOT:
            raise InvalidArgument("the root account stays", field="name")
        with self.store._write() as conn:
            if not conn.execute(accounts.delete().where(accounts.c.name == name)).rowcount:
                raise NotFound(f"no account {name}", field="name")
            conn.execute(account_tokens.delete().where(account_tokens.c.account == name))

    def add_token(self, name: str, now: datetime) -> str:
        token = new_token()
        with self.store._write() as conn:
            if not conn.execute(sa.select(accounts.c.name).where(accounts.c.name == name)).first():
                raise NotFound(f"no account {name}", field="account")
            conn.execute(
                account_tokens.insert().values(token_hash=hash_token(token), account=name, created_at=now)
            )
        return token

    def by_cert_subject(self, subject: str) -> AccountRow | None:
        with self.engine.connect() as conn:
            name = conn.execute(
                sa.select(accounts.c.name).where(accounts.c.cert_subject == subject)
            ).scalar_one_or_none()
        return self.get(name) if name else None

    def by_token(self, token: str) -> AccountRow | None:
        with self.engine.connect() as conn:
            name = conn.execute(
                sa.select(account_tokens.c.account).where(account_tokens.c.token_hash == hash_token(token))
            ).scalar_one_or_none()
        return self.get(name) if name else None

    def set_key(self, name: str, key_pem: str | None, certificate_pem: str | None) -> AccountRow:
        with self.store._write() as conn:
            done = conn.execute(
                accounts.update()
                .where(accounts.c.name == name)
                .values(signing_key=key_pem, signing_certificate=certificate_pem)
            )
            if not done.rowcount:
                raise NotFound(f"no account {name}", field="account")
        return self.one(name)

    def ensure_root(self, now: datetime) -> str | None:
        """Creates the root account (admin) on first start; returns its first token then."""
        with self.store._write() as conn:
            if conn.execute(sa.select(accounts.c.name).where(accounts.c.name == ROOT)).first():
                return None
            conn.execute(accounts.insert().values(name=ROOT, roles=role_word(R.ROLE_ADMIN), created_at=now))
            token = new_token()
            conn.execute(
                account_tokens.insert().values(token_hash=hash_token(token), account=ROOT, created_at=now)
            )
            return token


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c in ",/" for c in name) or len(name) > 100:
        raise InvalidArgument(f"{name!r} is not an account name (no spaces, commas or slashes)", field="name")


def _token_count(conn: sa.Connection, name: str) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(account_tokens).where(account_tokens.c.account == name)
        ).scalar_one()
    )


def _account(r: Any, token_count: int) -> AccountRow:
    roles = tuple(naming.enum_value(joc_pb2.Role, w) for w in r.roles.split(",") if w)
    created = r.created_at if r.created_at.tzinfo else r.created_at.replace(tzinfo=UTC)
    return AccountRow(
        r.name, roles, r.signing_key, r.signing_certificate, created, token_count, r.cert_subject
    )


class Authenticator:
    """Turns a call's metadata (or its client certificate) into a Caller. Lookups are cached a
    few seconds; changes to accounts clear the cache."""

    def __init__(self, accounts: AccountStore, required: bool) -> None:
        self.accounts = accounts
        self.required = required
        self._cache: dict[str, tuple[float, AccountRow | None]] = {}

    def forget(self) -> None:
        self._cache.clear()

    async def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        metadata = {k: v for k, v in (context.invocation_metadata() or ())}
        reason = str(metadata.get(REASON_METADATA, ""))
        header = str(metadata.get("authorization", ""))
        if not header:
            identity = tls.peer_identity(context)
            if identity is not None:
                account = await self._lookup(
                    f"subject {identity.subject}", self.accounts.by_cert_subject, identity.subject
                )
                if account is not None:
                    return Caller(account.name, account.name, permissions_of(account.roles), reason)
            if self.required:
                raise Unauthenticated("JOC requires a token: give the metadata 'authorization: Bearer TOKEN'")
            said = str(metadata.get(ACCOUNT_METADATA, "")) or ROOT
            return Caller(ROOT, said, permissions_of([R.ROLE_ADMIN]), reason)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization metadata must be 'Bearer TOKEN'")
        account = await self._account(token.strip())
        if account is None:
            raise Unauthenticated("unknown or revoked token")
        return Caller(account.name, account.name, permissions_of(account.roles), reason)

    async def _account(self, token: str) -> AccountRow | None:
        return await self._lookup(hash_token(token), self.accounts.by_token, token)

    async def _lookup(
        self, key: str, find: Callable[[str], AccountRow | None], value: str
    ) -> AccountRow | None:
        cached = self._cache.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        account = await asyncio.to_thread(find, value)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + TOKEN_CACHE_SECONDS, account)
        return account


# What a passive instance of a JOC cluster serves: reads of the database. The rest writes, or (as
# WatchOrder) follows what only the active instance's event ingestion sees.
SERVED_BY_PASSIVE = frozenset(
    {m for m, p in METHODS.items() if p is P.VIEW} - {"OrderService.WatchOrder"}
    | {"AccountService.ListAccounts", "AccountService.GetCaller"}
)


def guard(
    servicer: Any,
    service: ServiceDescriptor,
    authenticator: Authenticator,
    gate: Callable[[str], None] = lambda method: None,
) -> Any:
    """Wraps each RPC method of the servicer: it runs only for a caller with the permission the
    METHODS table gives it, with `current()` naming the caller, and only when `gate`("Service.Method")
    lets it (a passive JOC instance refuses writes there). Register the servicer after."""
    for method in service.methods:
        key = f"{service.name}.{method.name}"
        permission = METHODS[key]  # KeyError: a method left unguarded
        behaviour = getattr(servicer, method.name)
        setattr(servicer, method.name, _guarded(behaviour, permission, authenticator, key, gate))
    return servicer


def _guarded(
    behaviour: Callable[..., Any],
    permission: Permission,
    auth: Authenticator,
    key: str,
    gate: Callable[[str], None],
) -> Any:
    name = key.partition(".")[2]
    if inspect.isasyncgenfunction(behaviour):

        @functools.wraps(behaviour)
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            caller = await auth.caller(context)
            caller.require(permission, name)
            gate(key)
            # Each RPC runs in a task of its own: the value ends with it, no reset needed.
            _current.set(caller)
            async for item in behaviour(request, context):
                yield item

        return stream

    @functools.wraps(behaviour)
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        caller = await auth.caller(context)
        caller.require(permission, name)
        gate(key)
        _current.set(caller)
        return await behaviour(request, context)

    return unary
