"""python -m joc_svc --listen HOST:PORT --data-dir DIR --controller ID=HOST:PORT ... [--db-url URL]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from pathlib import Path

import joc_svc  # noqa: F401  (sets grpc's process environment first)
from gen.ostinato.joc.v1 import joc_pb2, joc_pb2_grpc
from joc_svc.controllers import ControllerLink, parse_controller_arg
from joc_svc.events import Hub, Ingestion
from joc_svc.servicers import DeploymentServicer, InventoryServicer, Joc, OrderServicer
from joc_svc.store import Store, default_url
from ostinato import rpc, service

log = logging.getLogger("joc_svc")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="joc", description="JOC: inventory, deployments and orders")
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--controller",
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="a controller JOC works with (repeatable; the first is the default for new orders)",
    )
    parser.add_argument("--db-url", help="SQLAlchemy URL; default sqlite:///DATA_DIR/joc.db")
    args = parser.parse_args(argv)
    controllers: dict[str, str] = {}
    for text in args.controller:
        try:
            controller_id, address = parse_controller_arg(text)
        except ValueError as e:
            parser.error(f"--controller: {e}")
        if controller_id in controllers:
            parser.error(f"--controller: {controller_id} given twice")
        controllers[controller_id] = address
    args.controllers = controllers
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def serve(stop: asyncio.Event) -> None:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        store = await asyncio.to_thread(Store, args.db_url or default_url(args.data_dir.resolve()))
        hub = Hub()
        links = {cid: ControllerLink(cid, address) for cid, address in args.controllers.items()}
        joc = Joc(store, hub, links)
        server = await rpc.start_server(
            args.listen,
            [
                (
                    joc_pb2_grpc.add_InventoryServiceServicer_to_server,
                    InventoryServicer(joc),
                    rpc.service_name(joc_pb2, "InventoryService"),
                ),
                (
                    joc_pb2_grpc.add_DeploymentServiceServicer_to_server,
                    DeploymentServicer(joc),
                    rpc.service_name(joc_pb2, "DeploymentService"),
                ),
                (
                    joc_pb2_grpc.add_OrderServiceServicer_to_server,
                    OrderServicer(joc),
                    rpc.service_name(joc_pb2, "OrderService"),
                ),
            ],
        )
        ingestion = [
            asyncio.create_task(Ingestion(link, store, hub).run(), name=f"events-{cid}")
            for cid, link in links.items()
        ]
        log.info("controllers: %s", ", ".join(f"{c}={link.address}" for c, link in links.items()) or "none")
        service.announce("joc", server.address, args.data_dir)
        try:
            await stop.wait()
        finally:
            for task in ingestion:
                task.cancel()
            for task in ingestion:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await server.stop(2.0)
            for link in links.values():
                await link.close()
            store.close()

    return service.run("joc", serve)


if __name__ == "__main__":
    raise SystemExit(main())
