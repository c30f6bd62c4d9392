"""A whole local topology as separate processes on loopback: JOC (SQLite), a controller, a
director agent and its subagents. Used by `ostinato up`, `ostinato demo` and the tests."""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ostinato.launch import Launched, launch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@dataclass
class TopologyConfig:
    """Listen addresses (port 0: any free port) and names. The defaults are `ostinato up`'s."""

    joc: str = "127.0.0.1:4446"
    controller: str = "127.0.0.1:4444"
    director: str = "127.0.0.1:4445"
    subagents: dict[str, str] = field(
        default_factory=lambda: {"subagent-1": "127.0.0.1:4447", "subagent-2": "127.0.0.1:4448"}
    )
    controller_id: str = "controller"
    agent_name: str = "agent-1"
    director_timeout_s: float = 10.0

    @classmethod
    def ephemeral(cls, subagents: int = 2) -> TopologyConfig:
        """Every port chosen by the system: for tests and the demo, which must not collide."""
        return cls(
            joc="127.0.0.1:0",
            controller="127.0.0.1:0",
            director="127.0.0.1:0",
            subagents={f"subagent-{i + 1}": "127.0.0.1:0" for i in range(subagents)},
        )

    @classmethod
    def from_toml(cls, path: Path) -> TopologyConfig:
        data = tomllib.loads(path.read_text())
        config = cls()
        for key in ("joc", "controller", "director"):
            if key in data:
                setattr(config, key, data[key].get("listen", getattr(config, key)))
        config.controller_id = data.get("controller", {}).get("id", config.controller_id)
        config.agent_name = data.get("director", {}).get("agent_name", config.agent_name)
        if "subagents" in data:
            config.subagents = {s["id"]: s.get("listen", "127.0.0.1:0") for s in data["subagents"]}
        config.director_timeout_s = float(data.get("director_timeout_seconds", config.director_timeout_s))
        return config


class Topology:
    def __init__(
        self, data_dir: Path, config: TopologyConfig | None = None, env: dict[str, str] | None = None
    ):
        self.data_dir = data_dir
        self.config = config or TopologyConfig()
        self.env = env or {}
        self.services: dict[str, Launched] = {}
        # After the first start each service keeps its address, so restarts are found again.
        self.addresses: dict[str, str] = {
            "joc": self.config.joc,
            "controller": self.config.controller,
            "director": self.config.director,
            **self.config.subagents,
        }

    @property
    def joc_address(self) -> str:
        return self.services["joc"].address

    def _args(self, name: str) -> tuple[str, str, list[str]]:
        cfg = self.config
        d = str(self.data_dir / name)
        listen = self.addresses[name]
        if name in cfg.subagents:
            return (
                "subagent",
                "subagent_svc",
                [
                    "--listen",
                    listen,
                    "--data-dir",
                    d,
                    "--id",
                    name,
                    "--director-timeout",
                    str(cfg.director_timeout_s),
                ],
            )
        if name == "director":
            subs = [a for s in cfg.subagents for a in ("--subagent", f"{s}={self.addresses[s]}")]
            return (
                "director",
                "director_svc",
                [
                    "--listen",
                    listen,
                    "--data-dir",
                    d,
                    "--agent-name",
                    cfg.agent_name,
                    *subs,
                ],
            )
        if name == "controller":
            return (
                "controller",
                "controller_svc",
                [
                    "--listen",
                    listen,
                    "--data-dir",
                    d,
                    "--id",
                    cfg.controller_id,
                    "--agent",
                    f"{cfg.agent_name}={self.addresses['director']}",
                ],
            )
        return (
            "joc",
            "joc_svc",
            [
                "--listen",
                listen,
                "--data-dir",
                d,
                "--controller",
                f"{cfg.controller_id}={self.addresses['controller']}",
            ],
        )

    def start_service(self, name: str) -> Launched:
        kind, module, args = self._args(name)
        launched = launch(kind, module, args, self.data_dir / name, env=self.env)
        launched.name = name
        self.services[name] = launched
        self.addresses[name] = launched.address
        return launched

    def start(self) -> None:
        """Starts in dialing order reversed, so each service knows the address it dials."""
        try:
            for name in [*self.config.subagents, "director", "controller", "joc"]:
                self.start_service(name)
        except BaseException:
            self.stop()
            raise

    def restart(self, name: str) -> Launched:
        self.services[name].stop()
        return self.start_service(name)

    def kill(self, name: str) -> None:
        self.services[name].kill()

    def stop(self) -> dict[str, int | None]:
        """Stops in dialing order (JOC first) and returns each service's exit code."""
        return {
            name: self.services[name].stop()
            for name in ["joc", "controller", "director", *self.config.subagents]
            if name in self.services
        }

    def __enter__(self) -> Topology:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _print_addresses(topology: Topology) -> None:
    for name, launched in topology.services.items():
        print(f"  {name:<12} {launched.address:<22} log {launched.log_path}")


def run_up(config_path: Path | None, data_dir: Path | None) -> int:
    """`ostinato up`: the topology in the foreground until Ctrl-C or SIGTERM."""
    config = TopologyConfig.from_toml(config_path) if config_path else TopologyConfig()
    data_dir = data_dir or Path(".ostinato")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    topology = Topology(data_dir.resolve(), config)
    try:
        topology.start()
    except (RuntimeError, TimeoutError) as e:
        print(f"ostinato: error: {e}", file=sys.stderr)
        return 1
    print(f"ostinato is up (data in {topology.data_dir}); Ctrl-C stops it")
    _print_addresses(topology)
    try:
        while not stop.is_set():
            for name, launched in topology.services.items():
                if not launched.alive():
                    print(
                        f"ostinato: error: {name} exited with {launched.process.returncode};"
                        f" see {launched.log_path}",
                        file=sys.stderr,
                    )
                    stop.set()
            stop.wait(0.5)
    finally:
        print("stopping ...")
        codes = topology.stop()
        for name, code in codes.items():
            print(f"  {name} stopped (exit {code})")
    return 0 if all(code == 0 for code in codes.values()) else 1


def run_demo() -> int:
    """`ostinato demo`: start a topology, deploy the examples, run one order, stop."""
    from ostinato import cli

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ostinato-demo-") as tmp:
        topology = Topology(Path(tmp), TopologyConfig.ephemeral())
        print("starting JOC, controller, director agent and two subagents ...")
        try:
            topology.start()
        except (RuntimeError, TimeoutError) as e:
            print(f"ostinato: error: {e}", file=sys.stderr)
            return 1
        try:
            _print_addresses(topology)
            joc = ["--joc", topology.joc_address]
            print(f"\n$ ostinato deploy {EXAMPLES.relative_to(ROOT)}/")
            rc = cli.main(["deploy", *joc, str(EXAMPLES)])
            if rc == 0:
                print("\n$ ostinato order add /hello --arg name=ostinato --wait")
                rc = cli.main(["order", "add", *joc, "/hello", "--arg", "name=ostinato", "--wait"])
        finally:
            print("\nstopping the topology ...")
            topology.stop()
    print(f"demo {'succeeded' if rc == 0 else 'FAILED'} in {time.monotonic() - started:.1f} s")
    return rc
