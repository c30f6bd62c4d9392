"""The `ostinato` command: a JOC client (inventory, deployment, signing, orders, clusters, audit,
accounts) and the launcher of each service.

Errors are one line `ostinato: error: ...` on stderr and exit 1; bad usage is argparse's exit 2.
grpc and the services are imported only by the commands that need them, so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ostinato  # noqa: F401  (sets grpc's process environment before grpc is imported)
from gen.ostinato.common.v1 import events_pb2, items_pb2, order_pb2, workflow_pb2
from ostinato import cli_security

DEFAULT_JOC = "127.0.0.1:4446"

# File name suffix -> inventory object type.
SUFFIXES: dict[str, int] = {
    ".workflow.json": items_pb2.ITEM_TYPE_WORKFLOW,
    ".jobresource.json": items_pb2.ITEM_TYPE_JOB_RESOURCE,
    ".fileordersource.json": items_pb2.ITEM_TYPE_FILE_ORDER_SOURCE,
    ".lock.json": items_pb2.ITEM_TYPE_LOCK,
    ".noticeboard.json": items_pb2.ITEM_TYPE_NOTICE_BOARD,
    ".subagentcluster.json": items_pb2.ITEM_TYPE_SUBAGENT_CLUSTER,
    ".calendar.json": items_pb2.ITEM_TYPE_CALENDAR,
    ".schedule.json": items_pb2.ITEM_TYPE_SCHEDULE,
}

SERVICES = {
    "joc": "joc_svc.__main__",
    "controller": "controller_svc.__main__",
    "director": "director_svc.__main__",
    "subagent": "subagent_svc.__main__",
}

# Without a token, JOC's audit log records who asked by this header (see joc_svc.auth).
ACCOUNT_METADATA = "x-ostinato-account"
REASON_METADATA = "x-ostinato-reason"

# A --wait outlives a JOC restart: it reconnects this long, then gives up.
WATCH_RECONNECT_SECONDS = 30.0


class CliError(Exception):
    """Ends the command with `ostinato: error: MESSAGE` and exit 1."""


# ---- inventory files (pure)


@dataclass(frozen=True, slots=True)
class LocalObject:
    path: str  # inventory path, e.g. /a/b
    type: int  # items_pb2.ItemType
    file: Path


def object_type(filename: str) -> tuple[str, int] | None:
    """'b.workflow.json' -> ('b', WORKFLOW); None for a name without a known suffix."""
    for suffix, item_type in SUFFIXES.items():
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)], item_type
    return None


def inventory_path(file: Path, folder: Path | None = None) -> tuple[str, int] | None:
    """The inventory path and type of a file: relative to `folder` when the file was found in it
    (folder/a/b.workflow.json -> /a/b), else just its name (/b)."""
    found = object_type(file.name)
    if found is None:
        return None
    name, item_type = found
    parents = file.parent.relative_to(folder).parts if folder is not None else ()
    return "/" + "/".join([*parents, name]), item_type


def collect_objects(arguments: list[Path]) -> list[LocalObject]:
    """The inventory objects named by files and folders (searched recursively, hidden ones and
    files of other names skipped). A file given explicitly must have a known suffix."""
    found: dict[tuple[str, int], LocalObject] = {}

    def add(file: Path, folder: Path | None) -> None:
        derived = inventory_path(file, folder)
        if derived is None:
            return
        key = derived
        if key in found and found[key].file.resolve() != file.resolve():
            raise CliError(f"{found[key].file} and {file} are both {derived[0]}")
        found[key] = LocalObject(derived[0], derived[1], file)

    for argument in arguments:
        if argument.is_dir():
            for file in sorted(argument.rglob("*")):
                relative = file.relative_to(argument).parts
                if file.is_file() and not any(part.startswith(".") for part in relative):
                    add(file, argument)
        elif argument.is_file():
            if object_type(argument.name) is None:
                raise CliError(f"{argument}: unknown object type; name it NAME{' or NAME'.join(SUFFIXES)}")
            add(argument, None)
        else:
            raise CliError(f"{argument}: no such file or folder")
    if not found:
        raise CliError(
            f"no inventory objects (NAME{', NAME'.join(SUFFIXES)}) in {' '.join(map(str, arguments))}"
        )
    return [found[k] for k in sorted(found)]


# ---- archives for signing outside JOC (pure)

SIGNING_README = """Objects exported by JOC for signing (security level high).

Sign each NAME.json file exactly as it is (do not change a byte), e.g. with OpenSSL:

    openssl dgst -sha256 -sign key.pem -out NAME.sig NAME.json

RSA and ECDSA keys work. Add the signer's X.509 certificate (PEM; intermediate CA certificates
may follow it) as signer.pem at the top of the archive, or as NAME.pem for one object.

Or with OpenPGP (gpg, Kleopatra): an armored detached signature beside each file,

    gpg --detach-sign --armor NAME.json        # writes NAME.json.asc (NAME.asc works too)

with no certificate: controllers, directors and subagents verify it against the OpenPGP public
keys they trust (--trust-pgp). Put the files back into an archive (zip or tar.gz) and deploy it with:

    ostinato deploy import ARCHIVE
"""
MANIFEST = "manifest.json"
SIGNER_CERTIFICATES = ("signer.pem", "signer.crt")


def suffix_of(item_type: int) -> str:
    for suffix, t in SUFFIXES.items():
        if t == item_type:
            return suffix
    raise CliError(f"no file name for objects of type {item_type}")


def archive_members(items: list[items_pb2.SignedItem]) -> dict[str, bytes]:
    """The files of an archive for signing: each object's exact JSON, a manifest, a README."""
    members: dict[str, bytes] = {"README.txt": SIGNING_README.encode()}
    manifest = []
    for item in items:
        name = item.path.lstrip("/") + suffix_of(item.type)
        members[name] = item.json.encode("utf-8")
        manifest.append({"file": name, "path": item.path, "versionId": item.version_id})
    members[MANIFEST] = json.dumps({"items": manifest}, indent=2).encode()
    return members


def write_archive(path: Path, members: dict[str, bytes]) -> None:
    """A zip, or a tar.gz when the name says so."""
    if path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path, "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(time.time())
                tar.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in members.items():
                z.writestr(name, data)


def read_archive(path: Path) -> dict[str, bytes]:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}
        if tarfile.is_tarfile(path):
            members: dict[str, bytes] = {}
            with tarfile.open(path) as tar:
                for info in tar.getmembers():
                    f = tar.extractfile(info) if info.isfile() else None
                    if f is not None:
                        members[info.name.removeprefix("./")] = f.read()
            return members
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise CliError(f"{path}: {e}") from None
    raise CliError(f"{path}: neither a zip nor a tar archive")


def _signature_bytes(data: bytes) -> bytes:
    """A signature file as openssl writes it (raw bytes), or base64 text of them."""
    import base64
    import binascii

    text = data.strip()
    if text and all(
        c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n" for c in text
    ):
        try:
            return base64.b64decode(text, validate=False)
        except binascii.Error:
            pass
    return data


def signed_items(members: dict[str, bytes]) -> list[items_pb2.SignedItem]:
    """The objects of a signed archive: NAME.<type>.json with NAME.<type>.sig and the signer's
    certificate (NAME.<type>.pem, else signer.pem), or with an OpenPGP signature NAME.<type>.asc
    (or NAME.<type>.json.asc, gpg's own name). Unsigned objects are passed on as they are:
    controllers reject them, and the history says so."""
    from ostinato import signing
    from ostinato.errors import OstinatoError

    versions: dict[str, str] = {}
    if MANIFEST in members:
        try:
            versions = {e["file"]: e["versionId"] for e in json.loads(members[MANIFEST])["items"]}
        except (ValueError, KeyError, TypeError):
            raise CliError(f"{MANIFEST}: not the manifest JOC wrote") from None
    shared = next((members[n] for n in SIGNER_CERTIFICATES if n in members), None)
    items = []
    for name in sorted(members):
        found = object_type(name.rsplit("/", 1)[-1])
        if found is None:
            continue
        item_type = found[1]
        base = name[: -len(".json")]
        try:
            text = members[name].decode("utf-8")
        except UnicodeDecodeError:
            raise CliError(f"{name}: not UTF-8 text") from None
        item = items_pb2.SignedItem(
            type=item_type,  # type: ignore[arg-type]
            path="/" + name[: -len(suffix_of(item_type))],
            version_id=versions.get(name, ""),
            json=text,
        )
        openpgp = members.get(base + ".asc") or members.get(name + ".asc")
        signature = members.get(base + ".sig")
        if openpgp is not None and signature is not None:
            raise CliError(f"{base}: signed twice (.sig and .asc); keep one")
        if openpgp is not None:
            item.signature.CopyFrom(events_pb2.Signature(signature=openpgp, algorithm=signing.OPENPGP))
        elif signature is not None:
            certificate = members.get(base + ".pem") or members.get(base + ".crt") or shared
            if certificate is None:
                raise CliError(f"{base}.sig: no certificate; add signer.pem (or {base}.pem)")
            try:
                item.signature.CopyFrom(
                    signing.signature_of(_signature_bytes(signature), certificate.decode("utf-8", "replace"))
                )
            except OstinatoError as e:
                raise CliError(f"{base}: {e}") from None
        items.append(item)
    if not items:
        raise CliError(f"no objects (NAME{', NAME'.join(SUFFIXES)}) in the archive")
    return items


# ---- describing orders (pure)

_STATE_PREFIX = "ORDER_STATE_"


def state_word(state: int) -> str:
    if state == order_pb2.ORDER_STATE_UNSPECIFIED:
        return "unknown"
    name = order_pb2.OrderState.Name(order_pb2.OrderState.ValueType(state))
    return name.removeprefix(_STATE_PREFIX).lower()


def summary_state(summary: Any) -> str:
    """An order's state as JOC knows it; an order that left its controller while JOC was away
    says so (how it ended is unknown)."""
    if summary.left_unseen:
        return f"unknown (left unseen, was {state_word(summary.last_seen_state)})"
    return state_word(summary.order.state)


def position_text(position: order_pb2.Position) -> str:
    from ostinato.workflow import positions

    return positions.text(position)


def outcome_text(outcome: workflow_pb2.Outcome) -> str:
    word = workflow_pb2.OutcomeKind.Name(outcome.kind).removeprefix("OUTCOME_KIND_").lower()
    if outcome.kind in (workflow_pb2.OUTCOME_KIND_SUCCEEDED, workflow_pb2.OUTCOME_KIND_FAILED):
        word += f" (return code {outcome.return_code})"
    elif outcome.signal:
        word += f" (signal {outcome.signal})"
    return f"{word}: {outcome.message}" if outcome.message else word


def describe(event: events_pb2.Event, order: order_pb2.Order) -> str | None:
    """One line about an order event for `order add --wait`, or None for bookkeeping events."""
    kind = event.WhichOneof("kind")
    text: str | None
    if kind == "order_added":
        added = event.order_added.order
        text = f"added to {added.workflow_path} version {added.workflow_version_id}"
        if added.HasField("scheduled_for"):
            text += f", scheduled for {_time_text(added.scheduled_for)}"
    elif kind == "order_started":
        text = "started"
    elif kind == "order_attached":
        text = f"attached to agent {event.order_attached.agent}"
    elif kind == "order_processing_started":
        text = f"processing on {event.order_processing_started.processing.subagent_id or 'a subagent'}"
        if order.attempt > 1:
            text += f" (attempt {order.attempt})"
    elif kind == "order_processed":
        text = f"processed: {outcome_text(event.order_processed.outcome)}"
    elif kind == "order_moved":
        text = f"moved to {position_text(event.order_moved.to)}"
    elif kind == "order_failed":
        outcome = event.order_failed.outcome
        if outcome.kind == workflow_pb2.OUTCOME_KIND_FAILED:
            text = outcome_text(outcome)  # "failed (return code 1)"
        else:
            text = f"failed: {outcome_text(outcome)}" if outcome.kind or outcome.message else "failed"
    elif kind == "order_finished":
        outcome = event.order_finished.outcome
        failed = outcome.kind not in (
            workflow_pb2.OUTCOME_KIND_UNSPECIFIED,
            workflow_pb2.OUTCOME_KIND_SUCCEEDED,
        )
        text = f"finished: {outcome_text(outcome)}" if failed else "finished"
    elif kind == "order_deleted":
        text = "deleted"
    elif kind is None and event.id:
        # JOC's mark where it resynchronised the order from the controller's snapshot.
        text = "taken from the controller's snapshot (JOC missed events of it)"
        if order.state == order_pb2.ORDER_STATE_UNSPECIFIED:
            text = "left the controller while JOC was away (how it ended is unknown)"
    else:
        text = None
    return f"{event.order_id} {text}" if text else None


def _time_text(ts: Any) -> str:
    return str(ts.ToDatetime(tzinfo=UTC).astimezone().isoformat(timespec="seconds"))


# ---- talking to JOC


class JocClient:
    """Blocking stubs on one channel; every gRPC error becomes a CliError with its message."""

    def __init__(self, address: str, security: Any, token: str = "", reason: str = "") -> None:
        import grpc

        from gen.ostinato.joc.v1 import joc_pb2_grpc
        from ostinato import rpc

        self.address = address
        _check_reachable(address)
        self._grpc = grpc
        self.channel = rpc.sync_channel(address, security)
        self.inventory = joc_pb2_grpc.InventoryServiceStub(self.channel)
        self.deployment = joc_pb2_grpc.DeploymentServiceStub(self.channel)
        self.orders = joc_pb2_grpc.OrderServiceStub(self.channel)
        self.audit = joc_pb2_grpc.AuditServiceStub(self.channel)
        self.cluster = joc_pb2_grpc.ClusterServiceStub(self.channel)
        self.accounts = joc_pb2_grpc.AccountServiceStub(self.channel)
        metadata = [(ACCOUNT_METADATA, _user())]
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        if reason:
            metadata.append((REASON_METADATA, reason))
        self.metadata = tuple(metadata)

    def call(self, method: Callable[..., Any], request: Any, what: str = "") -> Any:
        try:
            return method(request, metadata=self.metadata, timeout=60)
        except self._grpc.RpcError as e:
            raise self.error(e, what) from None

    def stream(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        try:
            yield from method(request, metadata=self.metadata)
        except self._grpc.RpcError as e:
            raise self.error(e) from None

    def error(self, e: Any, what: str = "") -> CliError:
        # grpc's own text for a connection JOC refused; JOC's messages (e.g. about an unreachable
        # controller, which may quote this text) never start with it.
        details = e.details() or ""
        if e.code() == self._grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
            # It listens (checked before): a TLS handshake failed, on either side (a refused
            # client certificate shows here as a closed socket).
            last = details.partition("last error: ")[2] or details
            return CliError(f"cannot connect to JOC at {self.address} (TLS handshake?): {last}")
        message = e.details() or e.code().name
        return CliError(f"{what}: {message}" if what else message)


def connect(args: argparse.Namespace) -> JocClient:
    """The client for a command's --joc, --token (else $OSTINATO_TOKEN, else the file named by
    $OSTINATO_TOKEN_FILE) and --reason."""
    token = args.token or os.environ.get("OSTINATO_TOKEN", "")
    token_file = os.environ.get("OSTINATO_TOKEN_FILE")
    if not token and token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise CliError(f"OSTINATO_TOKEN_FILE: {e}") from None
    try:
        security = cli_security.client_security(args)
    except cli_security.SecurityError as e:
        raise CliError(str(e)) from None
    return JocClient(args.joc, security, token, args.reason or "")


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CliError(f"--joc: expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """A plain TCP connect first: "nothing listens there" is then told apart from an UNAVAILABLE
    that JOC itself reports (e.g. its controller is down)."""
    host, port = _split_address(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        raise CliError(f"cannot reach JOC at {address}") from None


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:
        return "unknown"


# ---- commands


def put_files(joc: JocClient, paths: list[Path]) -> list[LocalObject]:
    """Puts inventory files (and folders of them) into JOC as drafts."""
    from gen.ostinato.joc.v1 import joc_pb2

    objects = collect_objects(paths)
    for obj in objects:
        try:
            text = obj.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"{obj.file}: {e}") from None
        joc.call(
            joc.inventory.PutObject,
            joc_pb2.PutObjectRequest(path=obj.path, type=obj.type, json=text),  # type: ignore[arg-type]
            str(obj.file),
        )
    return objects


def report_deployments(deployments: Any, no_wait: bool = False) -> int:
    """One line per history row; exit 1 unless everything is deployed (with --no-wait: unless
    nothing was refused)."""
    from gen.ostinato.joc.v1 import joc_pb2

    failed = 0
    for d in deployments:
        where = f"{d.path} version {d.version_id or '-'} to {d.controller_id}"
        if d.status == joc_pb2.DEPLOYMENT_STATUS_DEPLOYED:
            print(f"deployed {where}")
        elif d.pending:
            failed += 0 if no_wait else 1
            print(f"NOT deployed {where}: {d.message} (pending: JOC keeps delivering)")
        else:
            failed += 1
            print(f"NOT deployed {where}: {d.message}")
    return 1 if failed else 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    if args.inventory:
        paths = [str(p) for p in args.paths]
    else:
        paths = [o.path for o in put_files(joc, args.paths)]
    response = joc.call(
        joc.deployment.Deploy,
        joc_pb2.DeployRequest(paths=paths, controller_ids=args.controller or [], no_wait=args.no_wait),
    )
    return report_deployments(response.deployments, args.no_wait)


def cmd_deploy_redeploy(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.deployment.Redeploy,
        joc_pb2.RedeployRequest(
            folder=args.folder, controller_ids=args.controller or [], no_wait=args.no_wait
        ),
    )
    return report_deployments(response.deployments, args.no_wait)


def cmd_deploy_export(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    if not args.for_signing:
        raise CliError("only --for-signing exports exist: give it")
    joc = connect(args)
    response = joc.call(joc.deployment.ExportForSigning, joc_pb2.ExportForSigningRequest(paths=args.paths))
    members = archive_members(list(response.items))
    try:
        write_archive(args.output, members)
    except OSError as e:
        raise CliError(f"{args.output}: {e}") from None
    for item in response.items:
        print(
            f"exported {item.path} version {item.version_id} as {item.path.lstrip('/')}{suffix_of(item.type)}"
        )
    print(f"wrote {args.output}: sign each .json file (see README.txt inside), then: ostinato deploy import")
    return 0


def cmd_deploy_import(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    items = signed_items(read_archive(args.archive))
    joc = connect(args)
    response = joc.call(
        joc.deployment.ImportSigned,
        joc_pb2.ImportSignedRequest(items=items, controller_ids=args.controller or [], no_wait=args.no_wait),
    )
    return report_deployments(response.deployments, args.no_wait)


def cmd_deploy_history(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.deployment.ListDeployments,
        joc_pb2.ListDeploymentsRequest(
            path=args.path or "",
            limit=args.limit,
            controller_id=args.controller or "",
            pending_only=args.pending,
        ),
    )
    rows = [("ID", "PATH", "VERSION", "CONTROLLER", "STATUS", "AGENTS", "BY", "REQUESTED", "MESSAGE")]
    for d in response.deployments:
        if d.status == joc_pb2.DEPLOYMENT_STATUS_DEPLOYED:
            status = "deployed"
        else:
            status = "pending" if d.pending else "not deployed"
        agents = ",".join(a.agent for a in d.agent_confirmations) or "-"
        rows.append(
            (
                str(d.id),
                d.path,
                d.version_id or "-",
                d.controller_id,
                status,
                agents,
                d.account,
                _time_text(d.requested_at),
                d.message,
            )
        )
    print_table(rows)
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    if args.inventory:
        paths = [str(p) for p in args.paths]
    else:
        paths = [o.path for o in put_files(joc, args.paths)]
    response = joc.call(joc.deployment.Release, joc_pb2.ReleaseRequest(paths=paths))
    for o in response.released:
        print(f"released {_type_text(o.type)} {o.path}")
    return 0


def cmd_inventory_put(args: argparse.Namespace) -> int:
    joc = connect(args)
    for obj in put_files(joc, args.paths):
        print(f"put {_type_text(obj.type)} {obj.path}")
    return 0


def cmd_inventory_get(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(joc.inventory.GetObject, joc_pb2.GetObjectRequest(path=args.path, type=args.type))
    text = response.object.json
    print(text if args.raw else json.dumps(json.loads(text), indent=2, ensure_ascii=False))
    return 0


def cmd_inventory_ls(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.inventory.ListObjects,
        joc_pb2.ListObjectsRequest(folder=args.folder, recursive=args.recursive, type=args.type),
    )
    rows = [("TYPE", "PATH", "DEPLOYED", "RELEASED", "MODIFIED")]
    for o in response.objects:
        released = _time_text(o.released_at) if o.HasField("released_at") else "-"
        rows.append(
            (_type_text(o.type), o.path, o.deployed_version_id or "-", released, _time_text(o.modified_at))
        )
    print_table(rows)
    return 0


def cmd_inventory_rm(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.inventory.RemoveObject,
        joc_pb2.RemoveObjectRequest(path=args.path, type=args.type, recursive=args.recursive),
    )
    for o in response.removed:
        print(f"removed {_type_text(o.type)} {o.path}")
    return 0


def cmd_inventory_mv(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.inventory.MoveObject,
        joc_pb2.MoveObjectRequest(path=args.path, type=args.type, new_path=args.new_path),
    )
    for o in response.moved:
        print(f"moved {_type_text(o.type)} to {o.path}")
    return 0


def cmd_inventory_validate(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(joc.inventory.ValidateObjects, joc_pb2.ValidateObjectsRequest(paths=args.paths))
    for p in response.problems:
        print(f"{_type_text(p.type)} {p.path}: {p.field}: {p.message}")
    if not response.problems:
        print("valid")
    return 1 if response.problems else 0


def cmd_audit(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.audit.ListAuditEntries,
        joc_pb2.ListAuditEntriesRequest(
            limit=args.limit, account=args.account or "", action=args.action or ""
        ),
    )
    rows = [("AT", "ACCOUNT", "ACTION", "OBJECT", "REASON")]
    for e in response.entries:
        rows.append((_time_text(e.at), e.account, e.action, e.object, e.reason))
    print_table(rows)
    return 0


def cmd_order_command(args: argparse.Namespace) -> int:
    from gen.ostinato.common.v1 import commands_pb2
    from gen.ostinato.joc.v1 import joc_pb2

    commands = []
    for order_id in args.order_ids:
        command = commands_pb2.OrderCommand(order_id=order_id)
        if args.order_command == "cancel":
            command.cancel.kill = args.kill
        elif args.order_command == "suspend":
            command.suspend.kill = args.kill
        elif args.order_command == "resume":
            command.resume.SetInParent()
            if args.position is not None:
                command.resume.position.CopyFrom(args.position)
            for key, value in args.arg or []:
                command.resume.variables[key].CopyFrom(value)
        else:
            command.answer_prompt.SetInParent()
        commands.append(command)
    joc = connect(args)
    response = joc.call(joc.orders.CommandOrders, joc_pb2.CommandOrdersRequest(commands=commands))
    failed = 0
    for result in response.results:
        if result.error:
            failed += 1
            print(f"{result.order_id}: {args.order_command} refused: {result.error}")
        else:
            print(f"{result.order_id}: {args.order_command} accepted")
    return 1 if failed else 0


def cmd_account_add(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    request = joc_pb2.PutAccountRequest(name=args.name, roles=args.role)
    if args.cert_subject is not None:
        request.cert_subject = args.cert_subject
    response = joc.call(joc.accounts.PutAccount, request)
    print(f"account {response.account.name}: {_roles_text(response.account.roles)}")
    if response.account.cert_subject:
        print(f"a client certificate with subject {response.account.cert_subject} acts as it")
    if not args.no_token:
        token = joc.call(joc.accounts.CreateToken, joc_pb2.CreateTokenRequest(account=args.name)).token
        print(f"token (shown once): {token}")
    return 0


def cmd_account_ls(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(joc.accounts.ListAccounts, joc_pb2.ListAccountsRequest())
    rows = [("ACCOUNT", "ROLES", "TOKENS", "CLIENT CERTIFICATE", "SIGNING CERTIFICATE")]
    for a in response.accounts:
        signs_as = a.signing_certificate_subject or "-"
        rows.append((a.name, _roles_text(a.roles), str(a.token_count), a.cert_subject or "-", signs_as))
    print_table(rows)
    return 0


def cmd_account_rm(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    joc.call(joc.accounts.RemoveAccount, joc_pb2.RemoveAccountRequest(name=args.name))
    print(f"removed account {args.name}")
    return 0


def cmd_account_token(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    print(joc.call(joc.accounts.CreateToken, joc_pb2.CreateTokenRequest(account=args.name)).token)
    return 0


def cmd_account_key(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    try:
        key, cert = args.key.read_text(), args.cert.read_text()
    except OSError as e:
        raise CliError(str(e)) from None
    joc = connect(args)
    response = joc.call(
        joc.accounts.SetSigningKey,
        joc_pb2.SetSigningKeyRequest(account=args.name or "", private_key=key, certificate=cert),
    )
    print(f"account {response.account.name} signs as {response.account.signing_certificate_subject}")
    return 0


def cmd_account_whoami(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(joc.accounts.GetCaller, joc_pb2.GetCallerRequest())
    a = response.account
    print(f"account    {a.name}")
    print(f"roles      {_roles_text(a.roles)}")
    print(f"signs as   {a.signing_certificate_subject or '-'}")
    print(f"client     {a.cert_subject or '-'}")
    tokens = "required" if response.auth_required else "optional"
    print(f"JOC        security level {response.security_level}, tokens {tokens}")
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.cluster.GetClusterStatus, joc_pb2.GetClusterStatusRequest(controller_id=args.controller or "")
    )
    print_cluster(f"controller {response.controller_id}", response.controller)
    if response.agents_error:
        print(f"\nagents: cannot list them: {response.agents_error}")
    for agent in response.agents:
        print()
        if agent.error:
            print(f"agent {agent.agent}: {agent.error}")
        else:
            print_cluster(f"agent {agent.agent}", agent.status)
    return 0


def print_cluster(title: str, status: Any) -> None:
    """A cluster's nodes as a table under a line naming the cluster and its active node."""
    from gen.ostinato.common.v1 import cluster_pb2

    print(f"{title}: {f'active node {status.active_node}' if status.active_node else 'NO active node'}")
    rows = [("NODE", "ROLE", "TERM", "LAST EVENT", "LAG", "ADDRESS", "ERROR")]
    for n in status.nodes:
        answered = n.role not in (cluster_pb2.NODE_ROLE_UNREACHABLE, cluster_pb2.NODE_ROLE_UNSPECIFIED)
        numbers = (str(n.term), str(n.last_event_id), str(n.lag_events)) if answered else ("-", "-", "-")
        role = cluster_pb2.NodeRole.Name(n.role).removeprefix("NODE_ROLE_").lower()
        rows.append(
            (n.name or "-", "unknown" if role == "unspecified" else role, *numbers, n.address, n.error)
        )
    print_table(rows)


def cmd_cluster_switchover(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.cluster.Switchover,
        joc_pb2.SwitchoverRequest(
            controller_id=args.controller or "", agent=args.agent or "", to_node=args.to or ""
        ),
    )
    what = f"controller {response.controller_id}"
    if response.agent:
        what = f"agent {response.agent} of {what}"
    print(f"{what}: active node now {response.to_node} (was {response.from_node}; term {response.term})")
    return 0


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip())


def _type_text(item_type: int) -> str:
    name = items_pb2.ItemType.Name(items_pb2.ItemType.ValueType(item_type))
    return name.removeprefix("ITEM_TYPE_").lower().replace("_", "-")


def _roles_text(roles: Any) -> str:
    from gen.ostinato.joc.v1 import joc_pb2

    return ",".join(joc_pb2.Role.Name(r).removeprefix("ROLE_").lower() for r in roles) or "-"


def cmd_order_add(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    request = joc_pb2.AddOrderRequest(
        workflow_path=args.workflow_path, arguments=dict(args.arg or []), order_id=args.id or ""
    )
    if args.controller:
        request.controller_id = args.controller
    if args.at is not None:
        request.scheduled_for.FromDatetime(args.at)
    joc = connect(args)
    response = joc.call(joc.orders.AddOrder, request)
    print(response.order_id, flush=True)
    if response.existed:
        print(
            f"order {response.order_id} was known already (it exists, or ended within the last hour):"
            " nothing added",
            file=sys.stderr,
        )
    if not args.wait:
        return 0
    return wait_for_order(joc, response.order_id)


def wait_for_order(joc: JocClient, order_id: str) -> int:
    """Prints the order's steps and job output until it ends; exit 0 only when it finished."""
    from gen.ostinato.joc.v1 import joc_pb2

    last_id = 0
    order: order_pb2.Order | None = None
    last_line = ""
    given_up_at: float | None = None
    while True:
        try:
            for response in joc.orders.WatchOrder(
                joc_pb2.WatchOrderRequest(order_id=order_id), metadata=joc.metadata
            ):
                given_up_at = None
                event = response.event
                if event.id and event.id <= last_id:
                    continue  # seen before a reconnect
                last_id = max(last_id, event.id)
                order = response.order
                if event.WhichOneof("kind") == "order_std_written":
                    written = event.order_std_written
                    out = sys.stderr if written.stream == events_pb2.STD_STREAM_STDERR else sys.stdout
                    out.write(written.chunk)
                    out.flush()
                    continue
                line = describe(event, order)
                if line:
                    print(line, flush=True)
                    last_line = line
            break
        except joc._grpc.RpcError as e:
            if e.code() != joc._grpc.StatusCode.UNAVAILABLE:
                raise joc.error(e) from None
            # JOC restarting: the order runs on regardless; follow it again when JOC is back.
            now = time.monotonic()
            given_up_at = given_up_at or now + WATCH_RECONNECT_SECONDS
            if now > given_up_at:
                raise CliError(f"lost JOC at {joc.address} while waiting for order {order_id}") from None
            time.sleep(1.0)
    word = state_word(order.state) if order is not None else "unknown"
    if word not in last_line.split():
        print(f"{order_id} {word}", flush=True)
    return 0 if order is not None and order.state == order_pb2.ORDER_STATE_FINISHED else 1


def cmd_order_list(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.orders.ListOrders,
        joc_pb2.ListOrdersRequest(state=args.state, workflow_path=args.workflow or "", limit=args.limit),
    )
    rows = [("ORDER", "STATE", "WORKFLOW", "POSITION", "UPDATED")]
    for s in response.orders:
        o = s.order
        rows.append(
            (o.id, summary_state(s), o.workflow_path, position_text(o.position), _time_text(s.updated_at))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]))
    return 0


def cmd_order_show(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2
    from ostinato.workflow.values import value_text

    joc = connect(args)
    response = joc.call(joc.orders.GetOrder, joc_pb2.GetOrderRequest(order_id=args.order_id))
    s = response.summary
    o = s.order
    state = state_word(o.state)
    if s.left_unseen:
        state = (
            f"unknown: it left controller {s.controller_id} while JOC was away"
            f" (JOC saw it {state_word(s.last_seen_state)} last)"
        )
    lines = [
        ("order", o.id),
        ("state", state),
        ("workflow", f"{o.workflow_path} version {o.workflow_version_id}"),
        ("position", position_text(o.position)),
        ("controller", s.controller_id),
    ]
    if o.agent:
        lines.append(("agent", o.agent))
    if o.HasField("processing"):
        lines.append(("processing", f"on {o.processing.subagent_id}"))
    if o.HasField("scheduled_for"):
        lines.append(("scheduled", _time_text(o.scheduled_for)))
    lines += [("added", _time_text(s.added_at)), ("updated", _time_text(s.updated_at))]
    for k in sorted(o.arguments):
        lines.append(("argument", f"{k}={value_text(o.arguments[k])}"))
    for k in sorted(o.variables):
        lines.append(("variable", f"{k}={value_text(o.variables[k])}"))
    for h in o.historic_outcomes:
        lines.append(("outcome", f"at {position_text(h.position)}: {outcome_text(h.outcome)}"))
    events = str(len(response.events))
    if s.resynced_at_event_id:
        events += (
            f" (incomplete: JOC missed some and took the order from the controller's snapshot"
            f" at event {s.resynced_at_event_id})"
        )
    lines.append(("events", events))
    for key, value in lines:
        print(f"{key:<11}{value}")
    return 0


def cmd_order_logs(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    for chunk in joc.stream(
        joc.orders.GetOrderLog, joc_pb2.GetOrderLogRequest(order_id=args.order_id, follow=args.follow)
    ):
        out = sys.stderr if chunk.stream == events_pb2.STD_STREAM_STDERR else sys.stdout
        out.write(chunk.chunk)
        out.flush()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ostinato import topology

    return int(topology.run_up(args.config, args.data_dir, args.insecure))


def cmd_demo(args: argparse.Namespace) -> int:
    from ostinato import topology

    return int(topology.run_demo())


def run_service(name: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(SERVICES[name])
    return int(module.main(argv))


def run_witness(argv: list[str]) -> int:
    """`ostinato witness controller|director --cluster FILE --node NAME ...`: the node of that
    cluster flagged `witness` in FILE. It votes and keeps the journal, and never becomes active;
    the other options are the service's own (see `ostinato controller --help`)."""
    from ostinato.cluster.members import Cluster
    from ostinato.errors import InvalidArgument

    p = argparse.ArgumentParser(prog="ostinato witness", description=run_witness.__doc__)
    p.add_argument("kind", choices=["controller", "director"], help="the kind of cluster it votes in")
    p.add_argument("--cluster", type=Path, required=True, metavar="FILE")
    p.add_argument("--node", required=True, metavar="NAME")
    known, _ = p.parse_known_args(argv)
    try:
        member = Cluster.load(known.cluster).member(known.node)
    except InvalidArgument as e:
        p.error(f"--{e}")  # "--cluster: cannot read ..." or "--node: no node ..."
    if not member.witness:
        p.error(
            f"--node: node {known.node} is a full node in {known.cluster}; flag it"
            ' "witness": true there, or run it as ostinato ' + known.kind
        )
    return run_service(known.kind, argv[1:])


# ---- argument parsing


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    from ostinato.workflow.values import parse_cli_value

    return key, parse_cli_value(value)


def _iso_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO time like 2025-01-31T18:00, got {text!r}"
        ) from None
    # A time without zone means the operator's local time.
    return value.astimezone() if value.tzinfo is None else value


def _order_state(text: str) -> int:
    word = text.strip().upper()
    if _STATE_PREFIX + word not in order_pb2.OrderState.keys() or word == "UNSPECIFIED":
        states = ", ".join(n.removeprefix(_STATE_PREFIX).lower() for n in order_pb2.OrderState.keys()[1:])
        raise argparse.ArgumentTypeError(f"unknown state {text!r} (one of {states})")
    return int(order_pb2.OrderState.Value(_STATE_PREFIX + word))


def _item_type(text: str) -> int:
    """workflow, job-resource, jobresource, JOB_RESOURCE -> the ItemType number."""
    word = text.strip().upper().replace("-", "_")
    names = {n.removeprefix("ITEM_TYPE_"): v for n, v in items_pb2.ItemType.items() if v}
    names.update({n.replace("_", ""): v for n, v in list(names.items())})
    if word not in names:
        known = ", ".join(sorted(n.lower().replace("_", "-") for n in names if "_" in n or n.isalpha()))
        raise argparse.ArgumentTypeError(f"unknown type {text!r} (one of {known})")
    return int(names[word])


def _position(text: str) -> order_pb2.Position:
    from ostinato.workflow import positions

    try:
        return positions.parse_text(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a position like 2 or 1/try+0:3, got {text!r}") from None


def _role(text: str) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    name = "ROLE_" + text.strip().upper()
    if name not in joc_pb2.Role.keys() or name == "ROLE_UNSPECIFIED":
        raise argparse.ArgumentTypeError(f"unknown role {text!r} (viewer, editor, deployer, operator, admin)")
    return int(joc_pb2.Role.Value(name))


# `ostinato deploy WORD ...` for these words is the command deploy-WORD (deploy's own arguments are
# files and folders, so they cannot be subcommands of one parser).
DEPLOY_COMMANDS = ("export", "import", "redeploy", "history")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ostinato", description="ostinato workload automation")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    joc_option = argparse.ArgumentParser(add_help=False)
    joc_option.add_argument(
        "--joc",
        default=os.environ.get("OSTINATO_JOC") or DEFAULT_JOC,
        metavar="HOST:PORT",
        help="JOC's address (default: $OSTINATO_JOC, else %(default)s)",
    )
    joc_option.add_argument(
        "--token",
        default="",
        metavar="TOKEN",
        help="the account's token (default: $OSTINATO_TOKEN, else the file $OSTINATO_TOKEN_FILE names)",
    )
    joc_option.add_argument("--reason", metavar="TEXT", help="why: recorded in the audit log")
    cli_security.add_client_arguments(joc_option)
    controllers = argparse.ArgumentParser(add_help=False)
    controllers.add_argument(
        "--controller", action="append", metavar="ID", help="to this controller only (repeatable)"
    )
    controllers.add_argument(
        "--no-wait", action="store_true", help="return at once; JOC delivers in the background"
    )

    p = commands.add_parser(
        "deploy",
        parents=[joc_option, controllers],
        help="put inventory files into JOC and deploy them (also: deploy export|import|redeploy|history)",
        epilog="More: ostinato deploy export --for-signing PATH... -o ARCHIVE; ostinato deploy import"
        " ARCHIVE; ostinato deploy redeploy FOLDER; ostinato deploy history [PATH] (each has --help).",
    )
    p.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="NAME.workflow.json etc., or folders of them"
    )
    p.add_argument(
        "-i",
        "--inventory",
        action="store_true",
        help="the PATHs are inventory paths or folders, deployed as JOC holds them",
    )
    p.set_defaults(func=cmd_deploy)

    p = commands.add_parser(
        "deploy-export",
        prog="ostinato deploy export",
        parents=[joc_option],
        help=argparse.SUPPRESS,
        description="Writes the exact JSON of objects (or folders of them) to sign outside JOC.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="inventory paths or folders")
    p.add_argument("--for-signing", action="store_true", help="an archive for signing (security level high)")
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="ARCHIVE", help="NAME.zip or NAME.tar.gz"
    )
    p.set_defaults(func=cmd_deploy_export)

    p = commands.add_parser(
        "deploy-import",
        prog="ostinato deploy import",
        parents=[joc_option, controllers],
        help=argparse.SUPPRESS,
        description="Deploys the objects of an archive signed outside JOC (NAME.json, NAME.sig, signer.pem).",
    )
    p.add_argument("archive", type=Path, metavar="ARCHIVE")
    p.set_defaults(func=cmd_deploy_import)

    p = commands.add_parser(
        "deploy-redeploy",
        prog="ostinato deploy redeploy",
        parents=[joc_option, controllers],
        help=argparse.SUPPRESS,
        description="Deploys again to each controller the versions last deployed to it below a folder.",
    )
    p.add_argument("folder", metavar="FOLDER")
    p.set_defaults(func=cmd_deploy_redeploy)

    p = commands.add_parser(
        "deploy-history",
        prog="ostinato deploy history",
        parents=[joc_option],
        help=argparse.SUPPRESS,
        description="The deployment history, newest first.",
    )
    p.add_argument("path", nargs="?", metavar="PATH")
    p.add_argument("--controller", metavar="ID")
    p.add_argument("--pending", action="store_true", help="only deployments still being delivered")
    p.add_argument("--limit", type=int, default=50, help="at most this many (0: all; default %(default)s)")
    p.set_defaults(func=cmd_deploy_history)

    p = commands.add_parser(
        "release", parents=[joc_option], help="put calendars and schedules into JOC and release them"
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="NAME.schedule.json etc., or folders")
    p.add_argument("-i", "--inventory", action="store_true", help="the PATHs are inventory paths or folders")
    p.set_defaults(func=cmd_release)

    inventory = commands.add_parser("inventory", help="put, get, list, remove, move inventory objects")
    inventory_commands = inventory.add_subparsers(dest="inventory_command", required=True, metavar="COMMAND")
    p = inventory_commands.add_parser(
        "put", parents=[joc_option], help="put files (or folders of them) as drafts"
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.set_defaults(func=cmd_inventory_put)
    p = inventory_commands.add_parser("get", parents=[joc_option], help="an object's JSON")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--type", type=_item_type, default=0, help="when several objects share the path")
    p.add_argument("--raw", action="store_true", help="exactly as stored (canonical JSON)")
    p.set_defaults(func=cmd_inventory_get)
    p = inventory_commands.add_parser("ls", parents=[joc_option], help="the objects of a folder")
    p.add_argument("folder", nargs="?", default="/", metavar="FOLDER")
    p.add_argument("-r", "--recursive", action="store_true")
    p.add_argument("--type", type=_item_type, default=0)
    p.set_defaults(func=cmd_inventory_ls)
    p = inventory_commands.add_parser("rm", parents=[joc_option], help="remove an object (-r: a folder)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--type", type=_item_type, default=0)
    p.add_argument("-r", "--recursive", action="store_true", help="PATH is a folder: everything below it")
    p.set_defaults(func=cmd_inventory_rm)
    p = inventory_commands.add_parser("mv", parents=[joc_option], help="rename or move an object or folder")
    p.add_argument("path", metavar="PATH")
    p.add_argument("new_path", metavar="NEW_PATH")
    p.add_argument("--type", type=_item_type, default=0)
    p.set_defaults(func=cmd_inventory_mv)
    p = inventory_commands.add_parser("validate", parents=[joc_option], help="check references of drafts")
    p.add_argument("paths", nargs="*", metavar="PATH", help="objects or folders (default: everything)")
    p.set_defaults(func=cmd_inventory_validate)

    p = commands.add_parser("audit", parents=[joc_option], help="the audit log, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--account", metavar="NAME")
    p.add_argument("--action", metavar="ACTION", help='e.g. deploy, "cancel order"')
    p.set_defaults(func=cmd_audit)

    account = commands.add_parser("account", help="accounts, roles, tokens and signing keys")
    account_commands = account.add_subparsers(dest="account_command", required=True, metavar="COMMAND")
    p = account_commands.add_parser("add", parents=[joc_option], help="create an account (or set its roles)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", action="append", type=_role, required=True, help="viewer, editor, deployer, ...")
    p.add_argument("--no-token", action="store_true", help="make no token now")
    p.add_argument(
        "--cert-subject",
        metavar="DN",
        help='a TLS client certificate with this subject acts as the account, e.g. "CN=alice,O=ops"'
        ' ("": none)',
    )
    p.set_defaults(func=cmd_account_add)
    p = account_commands.add_parser("ls", parents=[joc_option], help="list accounts")
    p.set_defaults(func=cmd_account_ls)
    p = account_commands.add_parser("rm", parents=[joc_option], help="remove an account and its tokens")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_account_rm)
    p = account_commands.add_parser("token", parents=[joc_option], help="a new token for an account")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_account_token)
    p = account_commands.add_parser("key", parents=[joc_option], help="set the key an account signs with")
    p.add_argument("name", nargs="?", metavar="NAME", help="default: your own account")
    p.add_argument("--key", type=Path, required=True, metavar="KEY.pem")
    p.add_argument("--cert", type=Path, required=True, metavar="CERT.pem")
    p.set_defaults(func=cmd_account_key)
    p = account_commands.add_parser("whoami", parents=[joc_option], help="your account and JOC's settings")
    p.set_defaults(func=cmd_account_whoami)

    order = commands.add_parser("order", help="add, list, show, command orders and their logs")
    order_commands = order.add_subparsers(dest="order_command", required=True, metavar="COMMAND")

    p = order_commands.add_parser("add", parents=[joc_option], help="add an order to a workflow")
    p.add_argument("workflow_path", metavar="WORKFLOW_PATH")
    p.add_argument("--arg", action="append", type=_key_value, metavar="NAME=VALUE", help="an order argument")
    p.add_argument(
        "--at", type=_iso_time, metavar="ISO_TIME", help="start then (local time unless a zone is given)"
    )
    p.add_argument("--id", metavar="ORDER_ID", help="the order id (default: JOC makes one)")
    p.add_argument("--controller", metavar="ID", help="the controller (default: JOC's first)")
    p.add_argument("--wait", action="store_true", help="follow the order and its output until it ends")
    p.set_defaults(func=cmd_order_add)

    p = order_commands.add_parser("list", parents=[joc_option], help="list orders, newest first")
    p.add_argument("--state", type=_order_state, default=0, metavar="STATE", help="e.g. processing, finished")
    p.add_argument("--workflow", metavar="PATH")
    p.add_argument("--limit", type=int, default=100, help="at most this many (0: all; default %(default)s)")
    p.set_defaults(func=cmd_order_list)

    p = order_commands.add_parser("show", parents=[joc_option], help="an order's state, position, outcomes")
    p.add_argument("order_id", metavar="ORDER_ID")
    p.set_defaults(func=cmd_order_show)

    p = order_commands.add_parser("logs", parents=[joc_option], help="an order's job output")
    p.add_argument("order_id", metavar="ORDER_ID")
    p.add_argument("-f", "--follow", action="store_true", help="keep following until the order ends")
    p.set_defaults(func=cmd_order_logs)

    for name, text in (
        ("cancel", "cancel orders (a running job first ends, or is killed with --kill)"),
        ("suspend", "suspend orders where they are (--kill: kill their running job)"),
        ("resume", "resume suspended or failed orders"),
        ("answer", "answer the prompt orders wait at"),
    ):
        p = order_commands.add_parser(name, parents=[joc_option], help=text)
        p.add_argument("order_ids", nargs="+", metavar="ORDER_ID")
        if name in ("cancel", "suspend"):
            p.add_argument("--kill", action="store_true", help="kill the running job process")
        if name == "resume":
            p.add_argument("--position", type=_position, metavar="POSITION", help="resume there, e.g. 2")
            p.add_argument(
                "--arg", action="append", type=_key_value, metavar="NAME=VALUE", help="set an order variable"
            )
        p.set_defaults(func=cmd_order_command)

    cluster = commands.add_parser("cluster", help="controller and agent clusters: status, switch-over")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    p = cluster_commands.add_parser(
        "status", parents=[joc_option], help="the nodes of a controller's cluster and of its agents' clusters"
    )
    p.add_argument("--controller", metavar="ID", help="default: JOC's first controller")
    p.set_defaults(func=cmd_cluster_status)
    p = cluster_commands.add_parser(
        "switchover", parents=[joc_option], help="hand the active role to another node"
    )
    p.add_argument("--controller", metavar="ID", help="default: JOC's first controller")
    p.add_argument(
        "--agent", metavar="NAME", help="this agent's director cluster (default: the controller's)"
    )
    p.add_argument("--to", metavar="NODE", help="the node to become active (default: the most caught-up)")
    p.set_defaults(func=cmd_cluster_switchover)

    for name in SERVICES:
        # Dispatched before parsing (see main); listed here for --help.
        commands.add_parser(name, help=f"run the {name} service in the foreground (its own --help)")
    commands.add_parser(
        "witness", help="run the witness node of a controller or director cluster (its own --help)"
    )

    p = commands.add_parser("up", help="start the local topology from a config")
    p.add_argument("--config", type=Path, metavar="FILE")
    p.add_argument("--data-dir", type=Path, metavar="DIR")
    p.add_argument(
        "--insecure", action="store_true", help="plain text between all services (default: mutual TLS)"
    )
    p.set_defaults(func=cmd_up)
    cli_security.add_pki_commands(commands)

    p = commands.add_parser("demo", help="start a local topology, run an example workflow, show it")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SERVICES:
            # Before argparse: a service's own options must reach it untouched.
            return run_service(argv[0], argv[1:])
        if argv and argv[0] == "witness":
            return run_witness(argv[1:])
        if len(argv) > 1 and argv[0] == "deploy" and argv[1] in DEPLOY_COMMANDS:
            argv = [f"deploy-{argv[1]}", *argv[2:]]
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except (CliError, cli_security.SecurityError) as e:
        print(f"ostinato: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
