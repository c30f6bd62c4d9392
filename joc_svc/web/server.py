"""The web view's server: aiohttp in JOC's own event loop, TLS with JOC's certificates, who is
calling (joc_svc.web.access), errors as pages or JSON, server-sent events, templates.

aiohttp rather than Starlette with uvicorn: the web view must see the TLS client certificate of
a connection (certificate login, as on gRPC), which aiohttp gives (`transport.get_extra_info`)
and uvicorn 0.54 does not put into the ASGI scope; and aiohttp takes an `ssl.SSLContext` of our
own, which lets renewed certificate files apply to new connections as on JOC's gRPC port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import jinja2
from aiohttp import web

from gen.ostinato.joc.v1 import joc_pb2
from joc_svc import auth, naming
from joc_svc.plan_servicer import DailyPlanServicer
from joc_svc.servicers import (
    AccountServicer,
    ClusterServicer,
    DeploymentServicer,
    InventoryServicer,
    Joc,
    OrderServicer,
)
from joc_svc.web import access, present
from ostinato import tls
from ostinato.errors import OstinatoError

log = logging.getLogger(__name__)

# A live stream says something at least this often, so a browser that went away is noticed.
HEARTBEAT_SECONDS = 15.0
FLASH_COOKIE = "ostinato_flash"
STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 413,
    "UNAVAILABLE": 503,
}


@dataclass(frozen=True)
class Services:
    """JOC's gRPC servicers as auth.guard wrapped them: the web view calls the methods a gRPC
    client calls, so roles, checks and the audit log are the same."""

    orders: OrderServicer
    plan: DailyPlanServicer
    deployment: DeploymentServicer
    inventory: InventoryServicer
    cluster: ClusterServicer
    accounts: AccountServicer

    @classmethod
    def of(cls, guarded: Mapping[str, Any]) -> Services:
        """From JOC's servicers by service name (OrderService, ...)."""
        return cls(
            orders=guarded["OrderService"],
            plan=guarded["DailyPlanService"],
            deployment=guarded["DeploymentService"],
            inventory=guarded["InventoryService"],
            cluster=guarded["ClusterService"],
            accounts=guarded["AccountService"],
        )


@dataclass(frozen=True)
class JocInstance:
    name: str
    address: str  # gRPC
    web: str  # the web view's address
    role: str
    since: datetime
    database: str


class Failed(Exception):
    """An answer other than the page: status and message (a page, or JSON for scripts)."""

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class WebView:
    def __init__(
        self,
        joc: Joc,
        services: Services,
        security: tls.Security,
        grpc_address: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.joc = joc
        self.services = services
        self.security = security
        self.plain_text = security.insecure
        self.peers = tls.Peers(security.peers, "JOC's web view")
        self.grpc_address = grpc_address
        self.clock = clock
        self.started_at = clock()
        self.url = ""
        self.closing = asyncio.Event()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("joc_svc.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["q"] = _query
        self.templates.globals["Permission"] = auth.Permission
        from joc_svc.web.pages import Pages

        self.app = web.Application(
            middlewares=[self._errors, self._follow_active, self._authenticate],
            client_max_size=4 * 1024 * 1024,
        )
        self.app.add_routes(Pages(self).routes())
        self.app.router.add_static("/static", _package_dir("static"))
        self._runner: web.AppRunner | None = None

    # ---- life

    async def start(self, listen: str) -> str:
        """Listens on HOST:PORT (port 0: any); returns the view's address."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        context = None if self.plain_text else server_context(self.security)
        site = web.TCPSite(self._runner, host, int(port), ssl_context=context, shutdown_timeout=2.0)
        await site.start()
        bound = self._runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'http' if self.plain_text else 'https'}://{shown}:{bound}/"
        return self.url

    async def stop(self) -> None:
        self.closing.set()  # live streams end, so that shutting down waits for nothing
        if self._runner is not None:
            await self._runner.cleanup()

    async def instances(self) -> list[JocInstance]:
        """JOC's instances as the database's lease and heartbeats say, each with its role."""
        database = self.joc.store.engine.url.get_backend_name()
        _, rows = await self.joc.instance.status()
        return [
            JocInstance(
                row.id,
                row.address,
                row.web_url,
                naming.enum_word(joc_pb2.JocRole, role).lower(),
                datetime.fromtimestamp(row.started_ms / 1000, UTC),
                database,
            )
            for row, role in rows
        ]

    # ---- requests

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except OstinatoError as e:
            failed = Failed(STATUS.get(e.code_name, 500), str(e), e.code_name)
        except grpc.aio.AioRpcError as e:
            failed = Failed(503, e.details() or e.code().name, e.code().name)
        except Failed as e:
            failed = e
        if wants_json(request):
            return web.json_response({"error": failed.message, "code": failed.code}, status=failed.status)
        return self.page(
            request, "error.html", {"status": failed.status, "message": failed.message}, failed.status
        )

    @web.middleware
    async def _follow_active(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]
    ) -> Any:
        """A passive instance of a JOC cluster sends browsers to the active instance's view: its
        pages follow orders live, and its actions write."""
        if self.joc.instance.role.active or request.path.startswith("/static/"):
            return await handler(request)
        lease, rows = await self.joc.instance.status()
        active = next((row.web_url for row, _ in rows if lease.live and row.id == lease.holder), "")
        if not active:
            raise Failed(
                503,
                f"JOC instance {self.joc.instance.id} is passive and no instance is active now"
                " (a take-over?); try again in a few seconds",
                "UNAVAILABLE",
            )
        raise web.HTTPTemporaryRedirect(active.rstrip("/") + request.path_qs)

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]
    ) -> Any:
        if request.path.startswith("/static/") or request.path in ("/login", "/favicon.ico"):
            return await handler(request)
        if request.method == "POST":
            self._check_origin(request)
        try:
            request["who"] = await access.who(request, self.joc.authenticator, self.peers, self.plain_text)
        except access.NeedsLogin as e:
            if wants_json(request):
                return web.json_response(
                    {"error": str(e) or "log in first", "code": "UNAUTHENTICATED"}, status=401
                )
            target = "/login?" + urllib.parse.urlencode(
                {"next": request.path_qs, **({"why": str(e)} if str(e) else {})}
            )
            raise web.HTTPSeeOther(target) from None
        return await handler(request)

    def _check_origin(self, request: web.Request) -> None:
        """A browser sends its login cookie and its client certificate with a form posted from
        another site too: a post that comes from another origin is refused. Browsers name the
        origin of every post; a script without the cookie need not."""
        origin = request.headers.get("Origin") or request.headers.get("Referer", "")
        if not origin and access.TOKEN_COOKIE not in request.cookies:
            return
        if urllib.parse.urlsplit(origin).netloc != request.host:
            raise Failed(403, "a form of another site may not post here", "PERMISSION_DENIED")

    # ---- answers

    def render(self, request: web.Request, template: str, values: Mapping[str, Any]) -> str:
        who: access.Who | None = request.get("who")
        return self.templates.get_template(template).render(
            who=who, request=request, url=self.url, now=present.when(self.clock()), **values
        )

    def page(
        self, request: web.Request, template: str, values: Mapping[str, Any], status: int = 200
    ) -> web.Response:
        flash = _read_flash(request)
        response = web.Response(
            text=self.render(request, template, {"flash": flash, **values}),
            status=status,
            content_type="text/html",
        )
        if flash:
            response.del_cookie(FLASH_COOKIE, path="/")
        _secure_headers(response)
        return response

    def fragment(self, request: web.Request, template: str, values: Mapping[str, Any]) -> web.Response:
        response = web.Response(text=self.render(request, template, values), content_type="text/html")
        _secure_headers(response)
        return response

    def back(self, request: web.Request, to: str, ok: bool, message: str) -> web.Response:
        """After a form's action: to the page it came from, with what happened."""
        response = web.HTTPSeeOther(to if to.startswith("/") and not to.startswith("//") else "/")
        text = ("ok|" if ok else "error|") + message
        response.set_cookie(
            FLASH_COOKIE, urllib.parse.quote(text[:1500]), path="/", httponly=True, samesite="Strict"
        )
        return response

    async def events(
        self, request: web.Request, source: AsyncIterator[tuple[str, str]]
    ) -> web.StreamResponse:
        """Server-sent events (name, data) from `source` until it ends, the browser goes away or
        JOC stops; an error ends the stream with a "problem" event naming it."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        closing: asyncio.Future[Any] = asyncio.ensure_future(self.closing.wait())
        following: asyncio.Future[Any] = asyncio.ensure_future(anext(source))
        try:
            while True:
                done, _ = await asyncio.wait(
                    {following, closing}, timeout=HEARTBEAT_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if closing in done:
                    break
                if following not in done:
                    await response.write(b": still here\n\n")
                    continue
                try:
                    name, data = following.result()
                except StopAsyncIteration:
                    break
                except (OstinatoError, grpc.aio.AioRpcError) as e:
                    text = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
                    await response.write(sse("problem", text or "failed"))
                    break
                await response.write(sse(name, data))
                following = asyncio.ensure_future(anext(source))
        except (ConnectionError, RuntimeError):
            pass  # the browser went away ("Cannot write to closing transport")
        finally:
            closing.cancel()
            following.cancel()
            with contextlib.suppress(BaseException):
                await following
            with contextlib.suppress(Exception):
                await source.aclose()  # type: ignore[attr-defined]
        return response


WEB_ADDRESS_FILE = "web.address"


def announce_web(url: str, data_dir: Path) -> None:
    """Tells launchers where the web view is: a line on stdout and DATA_DIR/web.address, written
    before JOC announces its gRPC address (which launchers wait for)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{WEB_ADDRESS_FILE}.tmp"
    tmp.write_text(url + "\n")
    tmp.replace(data_dir / WEB_ADDRESS_FILE)
    print(f"joc web view on {url}", flush=True)


def sse(name: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {name}\n{lines}\n".encode()


def wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.content_type == "application/json"


def server_context(security: tls.Security) -> ssl.SSLContext:
    """JOC's certificate; a client certificate of the CA is asked for but not required (a browser
    without one logs in with a token). Renewed certificate files serve new connections."""
    assert security.cert and security.key and security.ca
    made: dict[str, Any] = {}

    def context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(security.cert), str(security.key))
        ctx.load_verify_locations(cafile=str(security.ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.sni_callback = choose
        return ctx

    def choose(connection: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        # Called for every handshake (also without SNI, as for an IP address): the files again
        # when they changed, as ostinato.tls does for gRPC.
        stamp = tls.generation(security)
        if stamp != made["stamp"]:
            try:
                made["context"], made["stamp"] = context(), stamp
                log.info("web view: TLS certificate files changed, now in use for new connections")
            except (OSError, ssl.SSLError) as e:
                log.warning("web view: TLS certificate files changed but cannot be used: %s", e)
                made["stamp"] = stamp
        connection.context = made["context"]

    made["stamp"] = tls.generation(security)
    made["context"] = context()
    return made["context"]


def _secure_headers(response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        " frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"


def _read_flash(request: web.Request) -> tuple[bool, str] | None:
    text = request.cookies.get(FLASH_COOKIE)
    if not text:
        return None
    kind, _, message = urllib.parse.unquote(text).partition("|")
    return kind == "ok", message


def _query(params: Mapping[str, Any], **changes: Any) -> str:
    """`{{ params | q(page=2) }}`: the query string of params with changes, empty values left out."""
    merged = {**params, **changes}
    return urllib.parse.urlencode({k: v for k, v in merged.items() if v not in ("", None, False, 0)})


def _package_dir(name: str) -> str:
    return str(Path(__file__).resolve().parent / name)


def json_of(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
