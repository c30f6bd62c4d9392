"""`ostinato inventory ...`: inventory files on disk (NAME.workflow.json, ...) and the objects JOC
holds as drafts."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from gen.ostinato.common.v1 import items_pb2
from ostinato.cli.client import CliError, JocClient, connect
from ostinato.cli.render import print_table, type_text
from ostinato.workflow.events import time_text

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


def cmd_inventory_put(args: argparse.Namespace) -> int:
    joc = connect(args)
    for obj in put_files(joc, args.paths):
        print(f"put {type_text(obj.type)} {obj.path}")
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
        released = time_text(o.released_at) if o.HasField("released_at") else "-"
        rows.append(
            (type_text(o.type), o.path, o.deployed_version_id or "-", released, time_text(o.modified_at))
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
        print(f"removed {type_text(o.type)} {o.path}")
    return 0


def cmd_inventory_mv(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(
        joc.inventory.MoveObject,
        joc_pb2.MoveObjectRequest(path=args.path, type=args.type, new_path=args.new_path),
    )
    for o in response.moved:
        print(f"moved {type_text(o.type)} to {o.path}")
    return 0


def cmd_inventory_validate(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(joc.inventory.ValidateObjects, joc_pb2.ValidateObjectsRequest(paths=args.paths))
    for p in response.problems:
        print(f"{type_text(p.type)} {p.path}: {p.field}: {p.message}")
    if not response.problems:
        print("valid")
    return 1 if response.problems else 0


def _item_type(text: str) -> int:
    """workflow, job-resource, jobresource, JOB_RESOURCE -> the ItemType number."""
    word = text.strip().upper().replace("-", "_")
    names = {n.removeprefix("ITEM_TYPE_"): v for n, v in items_pb2.ItemType.items() if v}
    names.update({n.replace("_", ""): v for n, v in list(names.items())})
    if word not in names:
        known = ", ".join(sorted(n.lower().replace("_", "-") for n in names if "_" in n or n.isalpha()))
        raise argparse.ArgumentTypeError(f"unknown type {text!r} (one of {known})")
    return int(names[word])


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], joc_option: argparse.ArgumentParser
) -> None:
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
