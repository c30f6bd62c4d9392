"""`ostinato deploy ...` and `ostinato release`: deploying objects to controllers, signed archives,
the deployment history; releasing calendars and schedules."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ostinato.cli.archives import archive_members, read_archive, signed_items, suffix_of, write_archive
from ostinato.cli.client import CliError, connect
from ostinato.cli.inventory import put_files
from ostinato.cli.render import print_table, type_text
from ostinato.workflow.events import time_text

# `ostinato deploy WORD ...` for these words is the command deploy-WORD (deploy's own arguments are
# files and folders, so they cannot be subcommands of one parser).
DEPLOY_COMMANDS = ("export", "import", "redeploy", "history")


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
    from gen.ostinato.common.v1 import items_pb2
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    if args.inventory:
        paths = [str(p) for p in args.paths]
    else:
        objects = put_files(joc, args.paths)
        # Calendars and schedules among the files are drafts now; they are released, not deployed.
        released = (items_pb2.ITEM_TYPE_CALENDAR, items_pb2.ITEM_TYPE_SCHEDULE)
        for o in objects:
            if o.type in released:
                print(f"put {type_text(o.type)} {o.path} (release it: ostinato release -i {o.path})")
        paths = [o.path for o in objects if o.type not in released]
        if not paths:
            raise CliError("nothing to deploy: calendars and schedules are released (ostinato release)")
    response = joc.call(
        joc.deployment.Deploy,
        joc_pb2.DeployRequest(
            paths=paths,
            controller_ids=args.controller or [],
            no_wait=args.no_wait,
            update_plan_from=args.update_plan_from or "",
        ),
    )
    failed = report_deployments(response.deployments, args.no_wait)
    for t in response.transfers:
        where = f"{t.workflow_path} version {t.workflow_version_id} on {t.controller_id}"
        if t.error:
            failed = 1
            print(f"NOT moved orders to {where}: {t.error}")
        else:
            print(f"moved {len(t.order_ids)} orders not started to {where}")
    return failed


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
                time_text(d.requested_at),
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
    response = joc.call(joc.deployment.Release, joc_pb2.ReleaseRequest(paths=paths, dry_run=args.dry_run))
    verb = "would release" if args.dry_run else "released"
    for o in response.released:
        print(f"{verb} {type_text(o.type)} {o.path}")
    for change in response.plan_changes:
        s = change.start
        if change.kind == joc_pb2.PLAN_CHANGE_KIND_ADDED:
            what = "would add" if args.dry_run else "added"
        else:
            what = "would remove" if args.dry_run else "removed"
        at = f"{s.scheduled_for.ToDatetime():%Y-%m-%dT%H:%M:%S}Z"
        print(f"plan {s.plan_date}: {what} {s.order_id} {s.workflow_path} at {at}")
    return 0


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], joc_option: argparse.ArgumentParser
) -> None:
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
    p.add_argument(
        "--update-plan-from",
        metavar="now|DATE",
        help="orders of the workflows not started and scheduled from then on move to the new version"
        " (default: submitted orders keep theirs)",
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
    p.add_argument(
        "--dry-run", action="store_true", help="release nothing; show how the daily plan would change"
    )
    p.set_defaults(func=cmd_release)
