"""A private 3-node NATS JetStream cluster with MQTT listeners, on loopback (tests, demo, bench).

Debian's ``nats-server`` (2.9): each node gets ``server_name``, a client ``listen``, a
``jetstream { store_dir }``, a ``cluster { name, listen, routes }`` naming the other two and an
``mqtt { listen }`` (MQTT 3.1.1 only; its sessions live in replicated JetStream). Ports are
picked free once and kept, so ``stop(i)`` / ``start(i)`` brings a node back where the gateways
and collectors expect it. Readiness is the node's own ``/healthz`` on its monitoring port
(JetStream current), polled under one deadline; the cluster is ready once a JetStream request
succeeds (the meta group has a leader).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from urbansense.broker import BrokerUnavailable, find_tool, free_port

SETUP_HINT = "run `make setup` (installs nats-server)"
CLUSTER_NAME = "urbansense"


def find_nats_server() -> str:
    try:
        return find_tool("nats-server")
    except BrokerUnavailable:
        raise BrokerUnavailable(f"nats-server is not installed; {SETUP_HINT}") from None


@dataclass(frozen=True, slots=True)
class NodePorts:
    client: int
    cluster: int
    mqtt: int
    http: int


class NatsNode:
    """One nats-server process; ``start()``/``stop()`` (SIGTERM)/``kill()`` (SIGKILL)."""

    def __init__(self, binary: str, name: str, workdir: Path, ports: NodePorts,
                 routes: list[int], host: str = "127.0.0.1") -> None:
        self.binary = binary
        self.name = name
        self.host = host
        self.ports = ports
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "nats.conf"
        self.log_path = workdir / "nats.log"
        self._proc: subprocess.Popen[bytes] | None = None
        route_urls = ", ".join(f'"nats-route://{host}:{p}"' for p in routes)
        self.config_path.write_text(
            f'server_name: "{name}"\n'
            f"listen: {host}:{ports.client}\n"
            f"http: {host}:{ports.http}\n"
            "jetstream {\n"
            f'  store_dir: "{workdir / "js"}"\n'
            "  max_memory_store: 64MB\n"
            "  max_file_store: 4GB\n"
            "}\n"
            "cluster {\n"
            f'  name: "{CLUSTER_NAME}"\n'
            f"  listen: {host}:{ports.cluster}\n"
            f"  routes: [{route_urls}]\n"
            "}\n"
            "mqtt {\n"
            f"  listen: {host}:{ports.mqtt}\n"
            # The MQTT sessions' and retained messages' own streams: without this the first
            # MQTT client fixes their replicas to the peers known at that moment (2 here once),
            # and a 2-replica stream loses its quorum with one node.
            f"  stream_replicas: {len(routes) + 1}\n"
            "}\n"
        )

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.ports.client}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} already running")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def healthy(self) -> bool:
        """The node's monitoring port says JetStream is current (HTTP 200 from /healthz)."""
        try:
            with urllib.request.urlopen(
                f"http://{self.host}:{self.ports.http}/healthz", timeout=1.0
            ) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if not self.running:
                raise RuntimeError(f"nats-server {self.name} exited; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nats-server {self.name} not healthy within {timeout_s}s; log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def varz(self, what: str = "jsz") -> dict[str, object]:
        with urllib.request.urlopen(
            f"http://{self.host}:{self.ports.http}/{what}", timeout=2.0
        ) as resp:
            data: dict[str, object] = json.load(resp)
            return data

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Clean shutdown (SIGTERM); no-op if not running."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._proc = None

    def kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        self._proc = None


class NatsCluster:
    """Three ``NatsNode`` routed to each other under ``workdir``.

    ``urls`` (NATS clients) and ``mqtt_ports`` (gateways) list every node; ``start()`` starts
    them all and returns once each is healthy; ``node(i)`` gives one for failover tests."""

    def __init__(self, workdir: Path, size: int = 3, host: str = "127.0.0.1") -> None:
        self.binary = find_nats_server()
        self.workdir = workdir
        self.host = host
        self.size = size
        self.nodes: list[NatsNode] = []
        self._configure()

    def _configure(self) -> None:
        host = self.host
        ports = [NodePorts(free_port(host), free_port(host), free_port(host), free_port(host))
                 for _ in range(self.size)]
        self.nodes = [
            NatsNode(self.binary, f"n{i + 1}", self.workdir / f"n{i + 1}", p,
                     [q.cluster for j, q in enumerate(ports) if j != i], host)
            for i, p in enumerate(ports)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.ports.mqtt for n in self.nodes]

    def node(self, i: int) -> NatsNode:
        return self.nodes[i]

    def start(self, timeout_s: float = 60.0) -> NatsCluster:
        """Start every node; a port taken meanwhile by another process (they were free when
        picked) means new ports for all, up to three times."""
        for attempt in range(3):
            try:
                return self._start_once(timeout_s)
            except RuntimeError as exc:
                if attempt == 2 or "address already in use" not in str(exc).lower():
                    raise
                self._configure()
        return self

    def _start_once(self, timeout_s: float) -> NatsCluster:
        deadline = time.monotonic() + timeout_s
        for n in self.nodes:
            if not n.running:
                n.spawn()
        try:
            for n in self.nodes:
                n.wait_healthy(max(0.1, deadline - time.monotonic()))
            for n in self.nodes:  # every route up: the JetStream meta group has all peers
                while int(n.varz("routez").get("num_routes", 0)) < len(self.nodes) - 1:  # type: ignore[call-overload]
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"nats-server {n.name}: routes not up; log:\n{n.log_tail()}")
                    time.sleep(0.05)
        except RuntimeError:
            self.stop()
            raise
        return self

    def start_node(self, i: int, timeout_s: float = 30.0) -> None:
        node = self.nodes[i]
        node.spawn()
        node.wait_healthy(timeout_s)

    def stop(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        up = sum(n.running for n in self.nodes)
        return f"<NatsCluster {up}/{len(self.nodes)} up {self.urls}>"
