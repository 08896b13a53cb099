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

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

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
    def plan(cls, root: Path, size: int = 3, first_port: int = 5701) -> RabbitCluster:
        run = secrets.token_hex(3)
        cluster = cls(root)
        for n in range(1, size + 1):
            # Distribution ports far from the AMQP ones and from the machine node's 25672.
            cluster.nodes.append(ClusterNode(f"zt{n}-{run}@localhost", first_port + n - 1, 26700 + first_port % 100 + n, root / f"zt{n}"))
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
        result = subprocess.run(
            [tool, "-n", node.name, *args], env=self.env(node), capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
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
                # A node that leaves must not take the cluster's partition handling with it.
                "cluster_partition_handling = pause_minority\n"
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

    def queue_leaders(self, via: ClusterNode, vhost: str = "/") -> dict[str, str]:
        """By queue name, the node that leads it (quorum queues), asked of `via`."""
        out = self.ctl(via, "list_queues", "-p", vhost, "name", "leader", "--quiet", "--no-table-headers", "--formatter", "tsv")
        leaders: dict[str, str] = {}
        for line in out.splitlines():
            if "\t" in line:
                name, leader = line.split("\t", 1)
                leaders[name] = leader.strip()
        return leaders

    def members(self, via: ClusterNode, queue: str, vhost: str = "/") -> list[str]:
        """The nodes holding a replica of quorum queue `queue`."""
        out = self.ctl(via, "list_queues", "-p", vhost, "name", "members", "--quiet", "--no-table-headers", "--formatter", "tsv")
        for line in out.splitlines():
            name, _, rest = line.partition("\t")
            if name == queue:
                return [m.strip(" []\"'") for m in rest.split(",") if m.strip(" []\"'")]
        return []

    def stop_node(self, node: ClusterNode) -> None:
        """Stop a node the way an operator or a failing host would take it away: its Erlang VM exits."""
        self.ctl(node, "stop", check=False, timeout=60)
        if node.process is not None:
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait()

    def stop(self) -> None:
        """Stop every node and delete their data: nothing of the cluster is left."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                self.ctl(node, "stop", check=False, timeout=60)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
            if node.process.poll() is None:
                os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
