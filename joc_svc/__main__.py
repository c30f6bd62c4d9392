"""python -m joc_svc --listen HOST:PORT --data-dir DIR --controller ID=HOST:PORT[,HOST:PORT...] ...
[--http-listen HOST:PORT] [--db-url URL] [--instance-id ID] [--security-level low|medium|high]
[--signing-key KEY.pem --signing-cert CERT.pem]
[--require-auth] [--plan-time-zone ZONE --plan-period-begin HH:MM:SS --plan-days-ahead N
--plan-submit-days-ahead N --plan-catch-up SECONDS | --no-daily-plan]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joc_svc  # noqa: F401  (sets grpc's process environment first)
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from joc_svc import auth
from joc_svc.controllers import ControllerLink, parse_controller_arg
from joc_svc.dailyplan import DailyPlan, PlanSettings
from joc_svc.deployer import Deployer
from joc_svc.events import Hub, Ingestion
from joc_svc.instance import Instance
from joc_svc.plan_servicer import DailyPlanServicer
from joc_svc.servicers import (
    LEVELS,
    AccountServicer,
    AuditServicer,
    ClusterServicer,
    DeploymentServicer,
    InventoryServicer,
    Joc,
    OrderServicer,
)
from joc_svc.store import Store, default_url
from joc_svc.web import Services, WebView
from joc_svc.web.server import announce_web
from ostinato import rpc, service, signing, tls
from ostinato.dailyplan import IANA_VERSION
from ostinato.errors import InvalidArgument, OstinatoError

log = logging.getLogger("joc_svc")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="joc", description="JOC: inventory, deployments and orders")
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        help="serve the web view there (HTTPS with the --tls-* certificates; default: no web view)",
    )
    parser.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--controller",
        action="append",
        default=[],
        metavar="ID=HOST:PORT[,HOST:PORT...]",
        help="a controller JOC works with, with the gRPC address of each node of its cluster (JOC"
        " follows the active one); repeatable, the first is the default for new orders",
    )
    parser.add_argument(
        "--db-url",
        help="SQLAlchemy URL; default sqlite:///DATA_DIR/joc.db. JOC instances that share one"
        " database (PostgreSQL; SQLite on one host) are a cluster: one active, the others passive",
    )
    parser.add_argument(
        "--instance-id",
        metavar="ID",
        help="this instance's name in the JOC cluster (default: the one in DATA_DIR/instance-id,"
        " else HOSTNAME-XXXX, made and kept there)",
    )
    parser.add_argument(
        "--security-level",
        choices=LEVELS,
        default="low",
        help="low: JOC signs with the root account's key; medium: with each account's own key;"
        " high: JOC holds no private key, objects are signed outside (default %(default)s)",
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        metavar="KEY.pem",
        help="the root account's private key (low, medium); default: the stored one, else a new one",
    )
    parser.add_argument(
        "--signing-cert", type=Path, metavar="CERT.pem", help="the certificate of --signing-key"
    )
    parser.add_argument(
        "--require-auth",
        action="store_true",
        help="every call needs 'authorization: Bearer TOKEN' (default: calls without one act as root)",
    )
    tls.add_arguments(
        parser,
        peers="default: any certificate of --tls-ca (clients' certificate identities may name accounts:"
        " ostinato account add NAME --cert-subject DN)",
    )
    service.add_arguments(parser)
    plan = parser.add_argument_group("daily plan")
    plan.add_argument(
        "--plan-time-zone", default="UTC", metavar="ZONE", help="the plan's time zone (default %(default)s)"
    )
    plan.add_argument(
        "--plan-period-begin",
        default="00:00:00",
        metavar="HH:MM:SS",
        help="where a plan date begins in that zone (default %(default)s)",
    )
    plan.add_argument(
        "--plan-days-ahead",
        type=int,
        default=7,
        metavar="N",
        help="dates planned ahead (default %(default)s)",
    )
    plan.add_argument(
        "--plan-submit-days-ahead",
        type=int,
        default=3,
        metavar="N",
        help="dates submitted to the controller ahead (default %(default)s)",
    )
    plan.add_argument(
        "--plan-catch-up",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="after an outage, a missed start this recent is submitted late, one per schedule"
        " (default %(default)s)",
    )
    plan.add_argument("--no-daily-plan", action="store_true", help="plan and submit nothing automatically")
    args = parser.parse_args(argv)
    args.security = tls.from_args(args, parser, peers_required=False)
    args.options = service.options(args, parser)
    try:
        args.plan_settings = PlanSettings(
            time_zone=args.plan_time_zone,
            period_begin=args.plan_period_begin,
            days_ahead_plan=args.plan_days_ahead,
            days_ahead_submit=args.plan_submit_days_ahead,
            catch_up_seconds=args.plan_catch_up,
            enabled=not args.no_daily_plan,
        )
    except InvalidArgument as e:
        flag = _PLAN_FLAGS.get(e.field or "", "--plan-...")
        parser.error(f"{flag}: {e.message}")
    if bool(args.signing_key) != bool(args.signing_cert):
        parser.error("--signing-key and --signing-cert go together")
    if args.signing_key and args.security_level == "high":
        parser.error("security level high: JOC holds no private key; do not give --signing-key")
    controllers: dict[str, list[str]] = {}
    for text in args.controller:
        try:
            controller_id, addresses = parse_controller_arg(text)
        except ValueError as e:
            parser.error(f"--controller: {e}")
        if controller_id in controllers:
            parser.error(f"--controller: {controller_id} given twice")
        controllers[controller_id] = addresses
    args.controllers = controllers
    return args


_PLAN_FLAGS = {
    "time_zone": "--plan-time-zone",
    "period_begin": "--plan-period-begin",
    "days_ahead_plan": "--plan-days-ahead",
    "days_ahead_submit": "--plan-submit-days-ahead",
    "catch_up_seconds": "--plan-catch-up",
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def serve(stop: asyncio.Event) -> None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        store = await asyncio.to_thread(Store, args.db_url or default_url(args.data_dir.resolve()))
        accounts = auth.AccountStore(store)
        await asyncio.to_thread(_prepare_accounts, accounts, args)
        hub = Hub()
        instance = Instance(store, _instance_id(args))
        links = {
            cid: ControllerLink(
                cid, addresses, epoch=lambda: instance.last_epoch, on_stale=instance.check_now
            )
            for cid, addresses in args.controllers.items()
        }
        deployer = Deployer(store, links)
        authenticator = auth.Authenticator(accounts, required=args.require_auth)
        plan = DailyPlan(store, links, args.plan_settings)
        joc = Joc(store, hub, links, deployer, accounts, authenticator, plan, args.security_level, instance)
        services: list[tuple[str, Callable[..., None], Any]] = [
            ("InventoryService", joc_pb2_grpc.add_InventoryServiceServicer_to_server, InventoryServicer(joc)),
            (
                "DeploymentService",
                joc_pb2_grpc.add_DeploymentServiceServicer_to_server,
                DeploymentServicer(joc),
            ),
            ("OrderService", joc_pb2_grpc.add_OrderServiceServicer_to_server, OrderServicer(joc)),
            ("ClusterService", joc_pb2_grpc.add_ClusterServiceServicer_to_server, ClusterServicer(joc)),
            ("AuditService", joc_pb2_grpc.add_AuditServiceServicer_to_server, AuditServicer(joc)),
            ("AccountService", joc_pb2_grpc.add_AccountServiceServicer_to_server, AccountServicer(joc)),
            ("DailyPlanService", joc_pb2_grpc.add_DailyPlanServiceServicer_to_server, DailyPlanServicer(joc)),
        ]
        guarded = {
            name: auth.guard(
                servicer, joc_pb2.DESCRIPTOR.services_by_name[name], authenticator, instance.admit
            )
            for name, _, servicer in services
        }
        server = await rpc.start_server(
            args.listen,
            [(add, guarded[name], rpc.service_name(joc_pb2, name)) for name, add, _ in services],
            service="JOC",
        )
        view = None
        if args.http_listen:
            view = WebView(joc, Services.of(guarded), args.security, server.address)
            instance.web_url = await view.start(args.http_listen)
            announce_web(instance.web_url, args.data_dir)

        async def duties(epoch: int) -> None:
            """What the active instance alone runs, until it stops being active."""
            await deployer.start()
            tasks = [
                asyncio.create_task(
                    Ingestion(link, store, hub, on_connected=functools.partial(deployer.kick, cid)).run(),
                    name=f"events-{cid}",
                )
                for cid, link in links.items()
            ]
            tasks.append(asyncio.create_task(plan.run(), name="daily-plan"))
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await deployer.stop()
                hub.end_all(instance.not_active)

        instance.address = server.address
        instance.start()
        on_duty = asyncio.create_task(instance.run_duties(duties), name="joc-instance")
        role = await instance.settled(timeout=instance.lease_ms / 1000 + 2 * instance.renew_s)
        log.info(
            "JOC instance %s (lease %d ms): %s",
            instance.id,
            instance.lease_ms,
            "active" if role.active else f"passive, active: {role.holder or 'none yet'}",
        )
        log.info(
            "controllers: %s",
            ", ".join(f"{c}={','.join(link.addresses)}" for c, link in links.items()) or "none",
        )
        log.info(
            "security level %s; %s",
            args.security_level,
            "every call needs a token" if args.require_auth else "calls without a token act as root",
        )
        service.announce("joc", server.address, args.data_dir)
        settings = args.plan_settings
        log.info(
            "daily plan %s: zone %s, period begin %s, %d days planned, %d submitted ahead (tz %s)",
            "on" if settings.enabled else "off",
            settings.time_zone,
            settings.period_begin,
            settings.days_ahead_plan,
            settings.days_ahead_submit,
            IANA_VERSION,
        )
        try:
            await stop.wait()
        finally:
            on_duty.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await on_duty
            await instance.stop()  # after the duties: the next active starts where they ended
            if view is not None:
                await view.stop()
            await server.stop(2.0)
            for link in links.values():
                await link.close()
            store.close()

    return service.run("joc", serve, args.security, args.options)


def _instance_id(args: argparse.Namespace) -> str:
    if args.instance_id:
        return str(args.instance_id)
    path = args.data_dir / "instance-id"
    if path.exists():
        return path.read_text().strip()
    instance_id = f"{socket.gethostname().split('.')[0]}-{secrets.token_hex(2)}"
    path.write_text(instance_id + "\n")
    return instance_id


def _prepare_accounts(accounts: auth.AccountStore, args: argparse.Namespace) -> None:
    """The root account on first start (its token in DATA_DIR/root.token), and its signing key
    at levels low and medium: the one given, else the stored one, else a new one. The root
    certificate is written to DATA_DIR/root-certificate.pem for controllers and agents to trust."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    token = accounts.ensure_root(now)
    if token is not None:
        path = args.data_dir / "root.token"
        path.touch(mode=0o600)
        path.write_text(token + "\n")
        log.info("created account root (admin); its token is in %s", path)
    if args.security_level == "high":
        if accounts.one(auth.ROOT).signing_key:
            log.warning("security level high: the root key stored earlier is not used")
        return
    if args.signing_key:
        try:
            key, cert = args.signing_key.read_text(), args.signing_cert.read_text()
            signer = signing.Signer(key, cert)
        except (OSError, OstinatoError) as e:
            raise SystemExit(f"joc: --signing-key/--signing-cert: {e}") from None
        accounts.set_key(auth.ROOT, key, signer.certificate_pem)
    elif not accounts.one(auth.ROOT).signing_key:
        key, cert = signing.generate_root("ostinato JOC root")
        accounts.set_key(auth.ROOT, key, cert)
        log.info(
            "made a root signing key; controllers and agents must trust %s",
            args.data_dir / "root-certificate.pem",
        )
    certificate = accounts.one(auth.ROOT).signing_certificate or ""
    (args.data_dir / "root-certificate.pem").write_text(certificate)


if __name__ == "__main__":
    raise SystemExit(main())
