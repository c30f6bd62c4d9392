"""`ostinato audit`: who did what."""

from __future__ import annotations

import argparse

from ostinato.cli.client import connect
from ostinato.cli.render import print_table
from ostinato.workflow.events import time_text


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
        rows.append((time_text(e.at), e.account, e.action, e.object, e.reason))
    print_table(rows)
    return 0


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], joc_option: argparse.ArgumentParser
) -> None:
    p = commands.add_parser("audit", parents=[joc_option], help="the audit log, newest first")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--account", metavar="NAME")
    p.add_argument("--action", metavar="ACTION", help='e.g. deploy, "cancel order"')
    p.set_defaults(func=cmd_audit)
