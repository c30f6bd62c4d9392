"""`ostinato cluster ...`: the nodes of controller and agent clusters, switch-over; `ostinato joc
...`: JOC's own cluster."""

from __future__ import annotations

import argparse
from typing import Any

from ostinato.cli.client import connect
from ostinato.cli.render import print_table


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
            print_subagents(agent)
    return 0


def print_subagents(agent: Any) -> None:
    """The subagents of the agent's active director node, as a table of their own."""
    print()
    if agent.subagents_error:
        print(f"subagents of agent {agent.agent}: cannot list them: {agent.subagents_error}")
        return
    print(f"subagents of agent {agent.agent}: {len(agent.subagents)}")
    rows = [("SUBAGENT", "STATE", "PROCESSES", "ADDRESS")]
    for s in agent.subagents:
        state = "connected" if s.connected else "not connected"
        rows.append((s.id, state, str(s.running_processes), s.address))
    print_table(rows)


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


def cmd_joc_status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(joc.cluster.GetJocStatus, joc_pb2.GetJocStatusRequest())
    active = response.active_instance
    print(f"JOC: {f'active instance {active}' if active else 'NO active instance'}, epoch {response.epoch}")
    now = datetime.now(UTC)
    rows = [("INSTANCE", "ROLE", "LAST HEARTBEAT", "ADDRESS", "WEB VIEW")]
    for i in response.instances:
        ago = (now - i.last_heartbeat.ToDatetime(UTC)).total_seconds()
        role = joc_pb2.JocRole.Name(i.role).removeprefix("JOC_ROLE_").lower()
        rows.append((i.id, role, f"{max(ago, 0):.1f} s ago", i.address, i.web_url or "-"))
    print_table(rows)
    return 0


def cmd_joc_switchover(args: argparse.Namespace) -> int:
    from gen.ostinato.joc.v1 import joc_pb2

    joc = connect(args)
    response = joc.call(joc.cluster.JocSwitchover, joc_pb2.JocSwitchoverRequest(to_instance=args.to or ""))
    was = f"was {response.from_instance}; epoch {response.epoch}"
    print(f"JOC: active instance now {response.to_instance} ({was})")
    return 0


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], joc_option: argparse.ArgumentParser
) -> None:
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

    group = commands.add_parser(
        "joc",
        help="run the joc service in the foreground (its own --help); or JOC's cluster: status, switch-over",
    )
    joc_commands = group.add_subparsers(dest="joc_command", required=True, metavar="COMMAND")
    p = joc_commands.add_parser(
        "status", parents=[joc_option], help="JOC's instances: role, epoch, last heartbeat"
    )
    p.set_defaults(func=cmd_joc_status)
    p = joc_commands.add_parser(
        "switchover", parents=[joc_option], help="the active JOC instance hands over to another"
    )
    p.add_argument("--to", metavar="ID", help="the instance to become active (default: any other live one)")
    p.set_defaults(func=cmd_joc_switchover)
