"""A RabbitMQ cluster of our own on this machine, from Debian's rabbitmq-server, for the failover test.

Each node has its own name (`zt<n>-<run>@localhost`), AMQP and distribution ports, data and log
directories and enabled-plugins file (none: no management or prometheus listener to collide with
anyone's) under one temporary directory, whose `.erlang.cookie` is the cluster's own: the servers
and every rabbitmqctl call run with that directory as HOME, so they never read or write the
machine's broker's cookie. Nothing here touches the machine's broker (rabbit@localhost): every
rabbitmqctl call names its node with `-n`.

Nodes 2.. join node 1 the documented way (stop_app, join_cluster, start_app). `stop()` leaves
nothing behind, whatever state the nodes are in.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import cli

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
QUEUES = "/usr/lib/rabbitmq/bin/rabbitmq-queues"


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    for tool in (SERVER, CTL, QUEUES):
        if not os.access(tool, os.X_OK):
            return f"{tool} is not installed (apt-get install rabbitmq-server)"
    return None


@dataclass
class ClusterNode:
    name: str
    amqp_port: int
    dist_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"


@dataclass
class RabbitCluster:
    root: Path
    nodes: list[ClusterNode] = field(default_factory=list)

    @classmethod
    def plan(cls, root: Path, ports: Sequence[tuple[int, int]]) -> RabbitCluster:
        """A node per (AMQP port, distribution port), named zt<n>-<run>@localhost."""
        run = secrets.token_hex(3)
        cluster = cls(root)
        for n, (amqp_port, dist_port) in enumerate(ports, start=1):
            cluster.nodes.append(ClusterNode(f"zt{n}-{run}@localhost", amqp_port, dist_port, root / f"zt{n}"))
        return cluster

    @property
    def amqp_url(self) -> str:
        """AMQP_URL naming every node (guest may log in from localhost)."""
        return ",".join(node.url for node in self.nodes)

    def env(self, node: ClusterNode) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(self.root),  # holds the cluster's own .erlang.cookie
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(node.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(node.base / "log"),
            "RABBITMQ_PID_FILE": str(node.base / "pid"),
            # The machine's rabbitmq-env.conf names its own node: keep our variables.
            "RABBITMQ_CONF_ENV_FILE": str(node.base / "rabbitmq-env.conf"),
        }

    def ctl(self, node: ClusterNode, *args: str, tool: str = CTL, timeout: float = 120, check: bool = True) -> str:
        """Run a CLI tool against `node` (tests/support/cli.py: bounded by `timeout`, whatever it
        leaves behind); its output, or RuntimeError when it fails (with `check`)."""
        result = cli.run([tool, "-n", node.name, *args], env=self.env(node), timeout=timeout, cwd=self.root)
        if check and result.returncode != 0:
            raise RuntimeError(f"{Path(tool).name} -n {node.name} {' '.join(args)} failed: {result.stderr or result.stdout}")
        return result.stdout

    def start(self) -> None:
        """Start every node, wait for them, and join nodes 2.. to node 1."""
        self.root.mkdir(parents=True, exist_ok=True)
        cookie = self.root / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        for node in self.nodes:
            for sub in ("mnesia", "log"):
                (node.base / sub).mkdir(parents=True, exist_ok=True)
            (node.base / "enabled_plugins").write_text("[].\n")
            (node.base / "rabbitmq-env.conf").write_text("")
            (node.base / "rabbitmq.conf").write_text(
                f"listeners.tcp.local = 127.0.0.1:{node.amqp_port}\n"
                "loopback_users = none\n"
                # A minority cut off from the others stops serving rather than diverging.
                "cluster_partition_handling = pause_minority\n"
                # Each new quorum queue's leader on the node with the fewest leaders, not on the node
                # the declaring client happens to be connected to (client-local, the default): the
                # topology is declared through one node, and would otherwise be led by it alone.
                "queue_leader_locator = balanced\n"
            )
            self._launch(node)
        for node in self.nodes:
            self.await_startup(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        for node in self.nodes:
            self.await_startup(node)

    def _launch(self, node: ClusterNode) -> None:
        log = open(node.base / "server.out", "ab")  # noqa: SIM115 - owned by the process
        node.process = subprocess.Popen(
            [SERVER], env=self.env(node), stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
        )

    def await_startup(self, node: ClusterNode, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exited with {node.process.returncode}: {self.server_log(node)}")
            try:
                self.ctl(node, "await_startup", "--timeout", "30", timeout=40)
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise

    def server_log(self, node: ClusterNode, tail: int = 30) -> str:
        path = node.base / "server.out"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.exists() else ""

    def node_named(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    def queues(self, via: ClusterNode, vhost: str = "/") -> list[dict[str, Any]]:
        """Every queue of `vhost` with its leader and members (for quorum queues), asked of `via`."""
        out = self.ctl(via, "list_queues", "-p", vhost, "name", "type", "leader", "members", "--quiet", "--formatter", "json")
        return list(json.loads(out))

    def queue_leaders(self, via: ClusterNode, vhost: str = "/") -> dict[str, str]:
        """By quorum queue name, the node that leads it."""
        return {q["name"]: str(q["leader"]) for q in self.queues(via, vhost) if q.get("type") == "quorum"}

    def members(self, via: ClusterNode, queue: str, vhost: str = "/") -> list[str]:
        """The nodes holding a replica of quorum queue `queue`."""
        return next([str(m) for m in q["members"]] for q in self.queues(via, vhost) if q["name"] == queue)

    def stop_node(self, node: ClusterNode) -> None:
        """Stop a node the way an operator or a failing host would take it away: its Erlang VM
        exits (`shutdown` returns once it has, unlike `stop`)."""
        self.ctl(node, "shutdown", check=False, timeout=60)
        self._reap(node)

    def _reap(self, node: ClusterNode) -> None:
        """Make sure nothing of the node runs: its start script and the Erlang VM under it."""
        if node.process is None:
            return
        try:
            node.process.wait(30)
        except subprocess.TimeoutExpired:
            pass
        # The VM runs under the start script, in the session it was started in (start_new_session).
        cli.kill_session(node.process)

    def stop(self, keep_logs: Path | None = None) -> None:
        """Stop every node and delete their data: nothing of the cluster is left (but the nodes'
        logs, copied into `keep_logs` when given)."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                self.ctl(node, "shutdown", check=False, timeout=60)
        for node in self.nodes:
            self._reap(node)
        if keep_logs is not None:
            for node in self.nodes:
                if (node.base / "log").is_dir():
                    shutil.copytree(node.base / "log", keep_logs / f"rabbit-{node.name.partition('@')[0]}", dirs_exist_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)
