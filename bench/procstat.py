"""CPU time and resident memory of the topology's processes, read from /proc (Linux).

CPU: utime + stime of /proc/PID/stat, the process's own time in user and kernel mode, all its
threads; not its children (a subagent's job processes count under cutime once reaped, which is
the jobs' cost, not the subagent's). Resident memory: VmRSS of /proc/PID/status.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ostinato.topology import Topology

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def pids(topology: Topology) -> dict[str, int]:
    """Service name -> pid of its process, in dialing order: joc, the controller's nodes, the
    director's nodes, the subagents."""
    names = ["joc", *topology.nodes["controller"], *topology.nodes["director"], *topology.config.subagents]
    return {name: topology.services[name].process.pid for name in names if name in topology.services}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) is in parentheses and may hold spaces: count from its end.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) * TICK_S


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS in /proc/{pid}/status")


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot: everything but idle and iowait."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    total = sum(values[:8])  # guest time is counted in user time already
    return total - values[3] - values[4], total


@dataclass
class CpuWindow:
    """CPU time each process and the whole machine spent between `start` and `stop`."""

    pids: Mapping[str, int]
    before: dict[str, float]
    machine_before: tuple[int, int]

    @classmethod
    def start(cls, pids: Mapping[str, int]) -> CpuWindow:
        return cls(pids, {name: cpu_seconds(pid) for name, pid in pids.items()}, machine_busy_ticks())

    def stop(self, orders: int) -> dict[str, object]:
        """Per process, CPU ms per order over the window (None without orders); the CPU seconds
        of all of them; the machine's busy share (every process on it, other users' too)."""
        spent = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        busy, total = machine_busy_ticks()
        busy_delta, total_delta = busy - self.machine_before[0], total - self.machine_before[1]
        per_order = {name: round(s * 1000 / orders, 2) for name, s in spent.items()} if orders else None
        return {
            "cpu_ms_per_order": per_order,
            "cpu_ms_per_order_all_services": round(sum(per_order.values()), 2) if per_order else None,
            "cpu_s_all_services": round(sum(spent.values()), 2),
            "machine_busy_pct": round(100 * busy_delta / total_delta, 1) if total_delta else None,
        }


def format_cpu(cpu_ms_per_order: Mapping[str, float] | None) -> str:
    if not cpu_ms_per_order:
        return "none finished"
    return ", ".join(f"{name} {ms}" for name, ms in cpu_ms_per_order.items())
