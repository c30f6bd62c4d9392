"""A whole local topology as separate processes on loopback: JOC (SQLite), a controller, a
director agent and its subagents. Used by `ostinato up`, `ostinato demo` and the tests."""

from __future__ import annotations

import secrets
import signal
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ostinato import pki, tls
from ostinato.launch import Launched, free_port, spawn, wait_listening

if TYPE_CHECKING:
    import grpc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@dataclass
class TopologyConfig:
    """Listen addresses (port 0: any free port) and names. The defaults are `ostinato up`'s."""

    joc: str = "127.0.0.1:4446"
    joc_web: str | None = "127.0.0.1:4443"  # JOC's web view (None: none)
    controller: str = "127.0.0.1:4444"
    director: str = "127.0.0.1:4445"
    subagents: dict[str, str] = field(
        default_factory=lambda: {"subagent-1": "127.0.0.1:4447", "subagent-2": "127.0.0.1:4448"}
    )
    controller_id: str = "controller"
    agent_name: str = "agent-1"
    director_timeout_s: float = 10.0
    subagent_heartbeat_s: float = 1.0  # the director's heartbeats to its subagents
    subagent_process_limit: int = 0  # each subagent's own limit (0: none)
    builtin_subagent: str | None = None  # id of a subagent inside the director (single node only)
    # Signing (see ostinato/signing.py): JOC's level; the root key JOC signs with at low and
    # medium (default: one made in DATA_DIR/trust/ at first start); more certificates or CAs that
    # controller and director trust besides the root certificate.
    security_level: str = "low"
    signing_key: Path | None = None
    signing_cert: Path | None = None
    trust: list[Path] = field(default_factory=list)
    trust_pgp: list[Path] = field(default_factory=list)  # OpenPGP public keys of signers
    require_auth: bool = False
    db_url: str | None = None  # JOC's database; default SQLite in its data dir
    # JOC instances: more than one is a JOC cluster over db_url (default: one SQLite file, which
    # only instances on one host may share), one instance active and the others passive.
    joc_instances: int = 1
    # Shape of the controller's and the director's cluster: "single" (one node), "witness" (two
    # full nodes and a witness) or "three" (three full nodes).
    controller_cluster: str = "single"
    director_cluster: str = "single"
    # Transport security: mutual TLS with certificates from `tls_dir` (default DATA_DIR/pki/,
    # where a CA and a certificate per service and for the CLI are made at first start), or
    # plain text everywhere when `insecure`.
    insecure: bool = False
    tls_dir: Path | None = None
    # JOC's daily plan (`[dailyplan]`): joc_svc's --plan-* flags by their names there, e.g.
    # {"time_zone": "Europe/Berlin", "days_ahead_submit": 1, "enabled": False}.
    dailyplan: dict[str, Any] = field(default_factory=dict)
    # Each service serves Prometheus metrics on this host at a port of its own (None: no metrics).
    metrics_host: str | None = "127.0.0.1"
    log_format: str = "text"  # every service's --log-format

    @classmethod
    def ephemeral(cls, subagents: int = 2) -> TopologyConfig:
        """Every port chosen by the system: for tests and the demo, which must not collide."""
        return cls(
            joc="127.0.0.1:0",
            joc_web="127.0.0.1:0",
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
        config.controller_cluster = data.get("controller", {}).get("cluster", config.controller_cluster)
        config.director_cluster = data.get("director", {}).get("cluster", config.director_cluster)
        if "subagents" in data:
            config.subagents = {s["id"]: s.get("listen", "127.0.0.1:0") for s in data["subagents"]}
        config.director_timeout_s = float(data.get("director_timeout_seconds", config.director_timeout_s))
        director = data.get("director", {})
        config.subagent_heartbeat_s = float(
            director.get("subagent_heartbeat_seconds", config.subagent_heartbeat_s)
        )
        config.subagent_process_limit = int(data.get("subagent_process_limit", config.subagent_process_limit))
        joc = data.get("joc", {})
        config.joc_web = joc.get("http_listen", config.joc_web) or None
        config.security_level = joc.get("security_level", config.security_level)
        config.require_auth = bool(joc.get("require_auth", config.require_auth))
        config.db_url = joc.get("db_url", config.db_url)
        instances = joc.get("instances", config.joc_instances)
        if not isinstance(instances, int) or not 1 <= instances <= 9:
            raise ValueError(f"{path}: [joc] instances: expected a number from 1 to 9, got {instances!r}")
        config.joc_instances = instances
        base = path.parent
        if ("signing_key" in joc) != ("signing_cert" in joc):
            raise ValueError(f"{path}: [joc] signing_key and signing_cert go together")
        if "signing_key" in joc:
            config.signing_key = base / joc["signing_key"]
            config.signing_cert = base / joc["signing_cert"]
        config.trust = [base / p for p in data.get("trust", {}).get("certificates", [])]
        config.trust_pgp = [base / p for p in data.get("trust", {}).get("pgp_keys", [])]
        security = data.get("tls", {})
        unknown = set(security) - {"insecure", "dir"}
        if unknown:
            raise ValueError(f"{path}: [tls] knows insecure and dir, not {sorted(unknown)}")
        config.insecure = bool(security.get("insecure", config.insecure))
        observe = data.get("metrics", {})
        if not observe.get("enabled", True):
            config.metrics_host = None
        elif "host" in observe:
            config.metrics_host = observe["host"]
        config.log_format = data.get("logs", {}).get("format", config.log_format)
        if "dir" in security:
            config.tls_dir = base / security["dir"]
        config.dailyplan = dict(data.get("dailyplan", {}))
        unknown_plan = sorted(set(config.dailyplan) - set(PLAN_FLAGS))
        if unknown_plan:
            raise ValueError(
                f"{path}: [dailyplan] {unknown_plan[0]}: unknown; known: {', '.join(PLAN_FLAGS)}"
            )
        return config


# `[dailyplan]` settings and the joc_svc flags they become; `enabled = false` is --no-daily-plan.
PLAN_FLAGS = {
    "time_zone": "--plan-time-zone",
    "period_begin": "--plan-period-begin",
    "days_ahead_plan": "--plan-days-ahead",
    "days_ahead_submit": "--plan-submit-days-ahead",
    "catch_up_seconds": "--plan-catch-up",
    "enabled": "--no-daily-plan",
}

# Node name suffixes of each cluster shape; a "w" node is the witness.
CLUSTER_SHAPES: dict[str, tuple[str, ...]] = {
    "single": ("",),
    "witness": ("a", "b", "w"),
    "three": ("a", "b", "c"),
}


class Topology:
    def __init__(
        self, data_dir: Path, config: TopologyConfig | None = None, env: dict[str, str] | None = None
    ):
        self.data_dir = data_dir
        self.config = config or TopologyConfig()
        self.env = env or {}
        self.services: dict[str, Launched] = {}
        # After the first start each service keeps its address, so restarts are found again.
        self.addresses: dict[str, str] = {"joc": self.config.joc, **self.config.subagents}
        # Nodes of each cluster (one named like its kind when single) and the files naming them.
        self.nodes: dict[str, list[str]] = {}
        self.clusters: dict[str, Path] = {}
        self.witnesses: set[str] = set()
        self.password = secrets.token_urlsafe(16)
        self.tls_dir = self.config.tls_dir or data_dir / "pki"
        self._certificates: dict[str, pki.Issued] = {}
        # JOC's instances: "joc", then joc-2, joc-3, ... (one identity: they share its certificate).
        self.joc_names = ["joc", *(f"joc-{i}" for i in range(2, self.config.joc_instances + 1))]
        for name in self.joc_names[1:]:
            self.addresses[name] = f"{self.config.joc.rsplit(':', 1)[0]}:0"
        for kind, shape, listen in (
            ("director", self.config.director_cluster, self.config.director),
            ("controller", self.config.controller_cluster, self.config.controller),
        ):
            if shape not in CLUSTER_SHAPES:
                raise ValueError(f"{kind} cluster must be one of {sorted(CLUSTER_SHAPES)}, not {shape!r}")
            if shape == "single":
                self.nodes[kind] = [kind]
                self.addresses[kind] = listen
                continue
            self._plan_cluster(kind, CLUSTER_SHAPES[shape], listen.rsplit(":", 1)[0])

    def _plan_cluster(self, kind: str, suffixes: tuple[str, ...], host: str) -> None:
        from ostinato.cluster.members import Cluster, Member

        members = []
        for suffix in suffixes:
            name = f"{kind}-{suffix}"
            self.addresses[name] = f"{host}:{free_port(host)}"
            members.append(Member(suffix, self.addresses[name], f"{host}:{free_port(host)}", suffix == "w"))
            if suffix == "w":
                self.witnesses.add(name)
        self.nodes[kind] = [f"{kind}-{s}" for s in suffixes]
        self.clusters[kind] = self.data_dir / f"{kind}-cluster.json"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.clusters[kind].write_text(Cluster(tuple(members)).to_json())

    def kind_of(self, name: str) -> str:
        if name in self.joc_names:
            return "joc"
        return next((kind for kind, names in self.nodes.items() if name in names), name)

    def node_addresses(self, kind: str) -> str:
        """The gRPC addresses clients dial: every full node of the cluster."""
        return ",".join(self.addresses[n] for n in self.nodes[kind] if n not in self.witnesses)

    # ---- transport security

    def certificates(self) -> dict[str, pki.Issued]:
        """A certificate per service and one for the CLI ("cli"), made at first start."""
        if not self._certificates:
            listening = [*self.addresses.values(), *([self.config.joc_web] if self.config.joc_web else [])]
            hosts = {a.rsplit(":", 1)[0] for a in listening} - {"0.0.0.0", "::", "[::]", ""}
            names = [*self.config.subagents, *self.nodes["director"], *self.nodes["controller"], "joc", "cli"]
            self._certificates = pki.ensure(self.tls_dir, names, ["localhost", "127.0.0.1", *sorted(hosts)])
        return self._certificates

    def security(self, name: str = "cli") -> tls.Security:
        """How a client acting as `name` (a service, or "cli") connects to this topology."""
        if self.config.insecure:
            return tls.INSECURE
        issued = self.certificates()[self._identity(name)]
        return tls.Security(issued.cert, issued.key, self.tls_dir / pki.CA_CERT)

    def channel(self, address: str, as_name: str = "cli") -> grpc.aio.Channel:
        """A channel from the test or tool process to one of the services, as `as_name`."""
        from ostinato import rpc

        return rpc.channel(address, self.security(as_name))

    def _identity(self, name: str) -> str:
        """Whose certificate the service presents: JOC's instances share JOC's."""
        return "joc" if name in self.joc_names else name

    def cli_args(self) -> list[str]:
        """What the `ostinato` CLI needs to reach this topology's JOC (besides --joc)."""
        return ["--insecure"] if self.config.insecure else ["--tls-dir", str(self.tls_dir)]

    def _peers(self, name: str) -> list[str]:
        """Whose calls a service accepts: a subagent its director's nodes, a director node the
        controller's nodes and its own cluster's, a controller node JOC and its own cluster's."""
        kind = self.kind_of(name)
        callers = {
            "director": [*self.nodes["controller"], *self.nodes["director"]],
            "controller": ["joc", *self.nodes["controller"]],
        }.get(kind, self.nodes["director"] if name in self.config.subagents else [])
        return [self.certificates()[c].subject for c in callers]

    def tls_args(self, name: str) -> list[str]:
        if self.config.insecure:
            return ["--insecure"]
        issued = self.certificates()[self._identity(name)]
        args = ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key)]
        args += ["--tls-ca", str(self.tls_dir / pki.CA_CERT)]
        return args + [a for peer in self._peers(name) for a in ("--tls-peer", peer)]

    def _node_args(self, name: str) -> list[str]:
        kind = self.kind_of(name)
        if kind not in self.clusters:
            return ["--listen", self.addresses[name]]
        node = name.rsplit("-", 1)[1]
        return ["--cluster", str(self.clusters[kind]), "--node", node, f"--cluster-password={self.password}"]

    @property
    def joc_address(self) -> str:
        return self.services["joc"].address

    @property
    def joc_addresses(self) -> str:
        """Every JOC instance's address, for the CLI's --joc (it follows the active one)."""
        return ",".join(self.services[n].address for n in self.joc_names if n in self.services)

    @property
    def web_url(self) -> str | None:
        """JOC's web view (https://HOST:PORT/), None without one."""
        path = self.data_dir / "joc" / "web.address"
        return path.read_text().strip() if self.config.joc_web and path.exists() else None

    def root_key(self) -> tuple[Path, Path] | None:
        """The root key and certificate JOC signs with (levels low and medium), made in
        DATA_DIR/trust/ at first start unless the config names them; None at level high."""
        cfg = self.config
        if cfg.security_level == "high":
            return None
        if cfg.signing_key and cfg.signing_cert:
            return cfg.signing_key, cfg.signing_cert
        folder = self.data_dir / "trust"
        key, cert = folder / "root-key.pem", folder / "root-certificate.pem"
        if not (key.exists() and cert.exists()):
            from ostinato import signing

            folder.mkdir(parents=True, exist_ok=True)
            key_pem, cert_pem = signing.generate_root("ostinato local root")
            key.touch(mode=0o600)
            key.write_text(key_pem)
            cert.write_text(cert_pem)
        return key, cert

    def _trust_args(self) -> list[str]:
        root = self.root_key()
        certificates = ([root[1]] if root else []) + list(self.config.trust)
        keys = [a for k in self.config.trust_pgp for a in ("--trust-pgp", str(k))]
        return [a for c in certificates for a in ("--trust", str(c))] + keys

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
                    "--process-limit",
                    str(cfg.subagent_process_limit),
                    *self._trust_args(),
                ],
            )
        if self.kind_of(name) == "director":
            subs = [a for s in cfg.subagents for a in ("--subagent", f"{s}={self.addresses[s]}")]
            return (
                "director",
                "director_svc",
                [
                    *self._node_args(name),
                    "--data-dir",
                    d,
                    "--agent-name",
                    cfg.agent_name,
                    "--subagent-heartbeat",
                    str(cfg.subagent_heartbeat_s),
                    *(["--builtin-subagent", cfg.builtin_subagent] if cfg.builtin_subagent else []),
                    *subs,
                    *self._trust_args(),
                ],
            )
        if self.kind_of(name) == "controller":
            return (
                "controller",
                "controller_svc",
                [
                    *self._node_args(name),
                    "--data-dir",
                    d,
                    "--id",
                    cfg.controller_id,
                    "--agent",
                    f"{cfg.agent_name}={self.node_addresses('director')}",
                    *self._trust_args(),
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
                f"{cfg.controller_id}={self.node_addresses('controller')}",
                *self._joc_args(name),
            ],
        )

    def _joc_args(self, name: str) -> list[str]:
        cfg = self.config
        args = ["--security-level", cfg.security_level, "--instance-id", name]
        if cfg.joc_web:
            args += ["--http-listen", cfg.joc_web if name == "joc" else f"{cfg.joc_web.rsplit(':', 1)[0]}:0"]
        root = self.root_key()
        if root:
            args += ["--signing-key", str(root[0]), "--signing-cert", str(root[1])]
        if cfg.require_auth:
            args.append("--require-auth")
        if cfg.db_url:
            args += ["--db-url", cfg.db_url]
        elif len(self.joc_names) > 1:  # a cluster on one host: the first instance's SQLite file
            args += ["--db-url", f"sqlite:///{(self.data_dir / 'joc' / 'joc.db').resolve()}"]
        for key, value in cfg.dailyplan.items():
            if key == "enabled":
                args += [] if value else [PLAN_FLAGS[key]]
            else:
                args += [PLAN_FLAGS[key], str(value)]
        return args

    def start_service(self, name: str) -> Launched:
        return self.start_services([name])[0]

    def start_services(self, names: list[str]) -> list[Launched]:
        """Starts the services together and waits until each listens (the nodes of a cluster
        announce themselves only once a majority of them runs)."""
        spawned = [self.spawn_service(name) for name in names]
        for name, launched in zip(names, spawned, strict=True):
            try:
                wait_listening(launched)
            except BaseException:
                for other in spawned:
                    other.kill()
                raise
            launched.name = name
            self.services[name] = launched
            self.addresses[name] = launched.address
        return spawned

    def spawn_service(self, name: str) -> Launched:
        """Starts the service's process without waiting until it listens (see launch.spawn)."""
        kind, module, args = self._args(name)
        args = [*args, *self.tls_args(name), "--log-format", self.config.log_format]
        if self.config.metrics_host is not None:
            args += ["--metrics-listen", f"{self.config.metrics_host}:0"]
        if name in self.witnesses:
            module, args = "ostinato.cli", ["witness", kind, *args]
        return spawn(kind, module, args, self.data_dir / name, env=self.env)

    def start(self) -> None:
        """Starts in dialing order reversed, so each service knows the address it dials."""
        try:
            for name in self.config.subagents:
                self.start_service(name)
            self.start_services(self.nodes["director"])
            self.start_services(self.nodes["controller"])
            for name in self.joc_names:  # one after the other: the first becomes the active one
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
            for name in [
                *self.joc_names,
                *self.nodes["controller"],
                *self.nodes["director"],
                *self.config.subagents,
            ]
            if name in self.services
        }

    def __enter__(self) -> Topology:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _print_addresses(topology: Topology) -> None:
    for name, launched in topology.services.items():
        metrics = f" metrics {launched.metrics_url}" if launched.metrics_url else ""
        pid = launched.process.pid
        print(f"  {name:<12} {launched.address:<22} pid {pid:<8}{metrics} log {launched.log_path}")
    if len(topology.joc_names) > 1:
        count = len(topology.joc_names)
        print(f"JOC cluster of {count} instances: ostinato ... --joc {topology.joc_addresses}")
    if topology.web_url:
        how = (
            "open to anyone in plain text"
            if topology.config.insecure
            else f"log in with the token in {topology.data_dir / 'joc' / 'root.token'}"
        )
        print(f"web view: {topology.web_url} ({how})")


def run_up(
    config_path: Path | None, data_dir: Path | None, insecure: bool = False, exit_on_failure: bool = False
) -> int:
    """`ostinato up`: the topology in the foreground until Ctrl-C or SIGTERM; a service that exits
    is restarted (ostinato.supervisor), or with exit_on_failure ends it all."""
    from ostinato.supervisor import Supervisor

    config = TopologyConfig.from_toml(config_path) if config_path else TopologyConfig()
    config.insecure = config.insecure or insecure
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
    print(f"ostinato is up (data in {topology.data_dir}); Ctrl-C stops it", flush=True)
    if config.insecure:
        print("WARNING: plain text (--insecure): anyone who reaches these ports is trusted", file=sys.stderr)
    else:
        print(f"mutual TLS: CA and certificates in {topology.tls_dir} (the CLI's: cli.pem, cli.key)")
    _print_addresses(topology)
    sys.stdout.flush()
    try:
        failed = Supervisor(topology, exit_on_failure=exit_on_failure).run(stop)
    finally:
        print("stopping ...")
        codes = topology.stop()
        for name, code in codes.items():
            print(f"  {name} stopped (exit {code})")
    return 1 if failed or not all(code == 0 for code in codes.values()) else 0


def run_demo() -> int:
    """`ostinato demo`: start a topology, deploy the examples, run one order, release the sample
    calendars and schedule and preview the daily plan's next starts, stop."""
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
            joc = ["--joc", topology.joc_address, *topology.cli_args()]
            print(f"\n$ ostinato deploy {EXAMPLES.relative_to(ROOT)}/")
            rc = cli.main(["deploy", *joc, str(EXAMPLES)])
            if rc == 0:
                print("\n$ ostinato order add /hello --arg name=ostinato --wait")
                rc = cli.main(["order", "add", *joc, "/hello", "--arg", "name=ostinato", "--wait"])
            if rc == 0:  # the deployment put examples/plan/ into the inventory as drafts
                print("\n$ ostinato release -i /plan")
                rc = cli.main(["release", *joc, "-i", "/plan"])
            if rc == 0:
                print("\n$ ostinato plan preview /plan/hello-daily --next 6")
                rc = cli.main(["plan", "preview", *joc, "/plan/hello-daily", "--next", "6"])
        finally:
            print("\nstopping the topology ...")
            topology.stop()
    print(f"demo {'succeeded' if rc == 0 else 'FAILED'} in {time.monotonic() - started:.1f} s")
    return rc
