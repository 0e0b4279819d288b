"""``urbansense demo --city``: the city tier on one machine, checked against ground truth.

Every part a child process on loopback in a temp dir: a private 3-node NATS JetStream
cluster, a private PostgreSQL (or SQLite, ``--store sqlite``), two ``urbansense collector run``
sharing one durable consumer, and one ``urbansense gateway run --config`` per gateway of the
Angers-centre district plus a third between the two (overlapping coverage: most frames are
heard by two or three). The simulator runs here and feeds the gateways through their
documented inputs: BLE adverts on each gateway's datagram socket, serial nodes on ptys. Each
gateway publishes with ``publish.backend = "jetstream"`` to all three nodes (docs/CITY.md) and
reports through its ``/api/status``. A third of the way in, the NATS node the first gateway
publishes through is stopped; half way, one collector is SIGKILLed (its unacknowledged
messages go to the other after ``ack_wait_s``). At the end the database is read back and every
frame the simulator sent is accounted for: sent / lost on air / stored / missing / duplicated
/ wrong, the last three 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from urbansense.demo import Received, compare
from urbansense.demo_run import Say

ACK_WAIT_S = 5.0
DRAIN_TIMEOUT_S = 90.0


class Child:
    """``urbansense <part> run --config F`` as a child process (part: collector, gateway)."""

    def __init__(self, part: str, name: str, config: Path, log: Path) -> None:
        self.part = part
        self.name = name
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "urbansense", self.part, "run", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def _collector_toml(name: str, servers: list[str], store_url: str, http_port: int) -> str:
    urls = ", ".join(f'"{u}"' for u in servers)
    return (f'[collector]\nid = "{name}"\n[source]\nkind = "jetstream"\nservers = [{urls}]\n'
            f'ack_wait_s = {ACK_WAIT_S}\n[store]\nurl = "{store_url}"\n'
            f'[batch]\nmax_messages = 256\nfetch_timeout_s = 0.5\n[http]\nport = {http_port}\n')


def _gateway_toml(gw_id: str, gdir: Path, servers: list[str], mqtt_ports: list[int], socket: str,
                  serial_ports: list[str], http_port: int) -> str:
    q = json.dumps  # a JSON string is a TOML basic string
    return (f'[gateway]\nsite = "angers"\nid = {q(gw_id)}\nregistry = {q(str(gdir / "nodes.jsonl"))}\n'
            f'data_dir = {q(str(gdir / "data"))}\n'
            f'[publish]\nbackend = "jetstream"\nservers = {q(servers)}\n'
            f'[mqtt]\nbrokers = {q([f"127.0.0.1:{p}" for p in mqtt_ports])}\nprotocol = "3.1.1"\n'
            f'connect_timeout_s = 2.0\n'
            f'[serial]\nports = {q(serial_ports)}\n'
            f'[ble]\nenabled = true\nbackend = "datagram"\ndatagram_socket = {q(socket)}\n'
            f'[http]\nport = {http_port}\n')


def gateway_status(port: int) -> dict[str, Any] | None:
    """A gateway child's ``/api/status`` (None while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as resp:
            data: dict[str, Any] = json.load(resp)
            return data
    except (OSError, ValueError):
        return None


def _drained(st: dict[str, Any] | None) -> bool:
    return st is not None and st["published"]["readings"] >= st["accepted"] and st["outbox"]["batches"] == 0


async def _wait_stream(urls: list[str], name: str, timeout_s: float = 60.0) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(servers=urls)
    try:
        js = nc.jetstream(timeout=5)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(NotFoundError, nats.errors.TimeoutError):
                await js.stream_info(name)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream {name} not created by the collectors in {timeout_s} s")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def _consumer_backlog(urls: list[str]) -> int | None:
    """Messages the collectors' durable consumer has not had acknowledged yet."""
    import nats

    try:
        nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=1)
    except Exception:  # a node is down: asked again next time
        return None
    try:
        info = await nc.jetstream(timeout=5).consumer_info("URBANSENSE", "collectors")
        return int(info.num_pending) + int(info.num_ack_pending)
    except Exception:  # status only: asked again next time
        return None
    finally:
        await nc.close()


def read_back(store_url: str) -> Received:
    """What the database holds, in the shape the district demo's ledger compares."""
    rx = Received()
    if store_url.startswith("sqlite:///"):
        import sqlite3

        conn: Any = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    else:
        import psycopg

        conn = psycopg.connect(store_url)
    try:
        values = {(n, f): json.loads(v) for n, f, v in
                  conn.execute("SELECT node_id, fcnt, vals FROM readings").fetchall()}
        rows = conn.execute("SELECT COUNT(*) FROM readings").fetchone()
        for n, f, gw in conn.execute("SELECT node_id, fcnt, gateway_id FROM receptions").fetchall():
            rx.frames[(n, f)].append((gw, values.get((n, f), {})))
        # A reading with no reception, or stored twice, would be a store bug: counted as wrong /
        # duplicated by the caller from these.
        rx.messages = int(rows[0])
        rx.bad_packs = len(set(values) - set(rx.frames))
    finally:
        conn.close()
    return rx


async def run_city(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.registry import NodeSpec, write_registry
    from simulator import scenario as scenario_mod
    from simulator.sim import Simulation
    from urbansense.broker import free_port
    from urbansense.natscluster import NatsCluster

    say = Say(args.json)
    t_start = time.monotonic()
    out: Path = args.out
    work = Path(tempfile.mkdtemp(prefix="urbansense-city-"))
    cluster = NatsCluster(work / "nats").start()
    say(f"nats: 3-node JetStream cluster, MQTT on {', '.join(map(str, cluster.mqtt_ports))}")
    pg = None
    if args.store == "postgres":
        from urbansense.pgserver import PgServer

        pg = PgServer().start()
        store_url = f"postgresql://urbansense@127.0.0.1:{pg.port}/urbansense"
        say(f"store: private PostgreSQL on 127.0.0.1:{pg.port}")
    else:
        store_url = f"sqlite:///{work / 'city.db'}"
        say(f"store: SQLite {work / 'city.db'}")
    collectors = []
    http_ports = []
    for i in range(2):
        cfg_path = work / f"collector-{i + 1}.toml"
        port = free_port()
        http_ports.append(port)
        cfg_path.write_text(_collector_toml(f"collector-{i + 1}", cluster.urls, store_url, port))
        c = Child("collector", f"collector-{i + 1}", cfg_path, out / f"collector-{i + 1}.log")
        c.start()
        collectors.append(c)
    gateways: list[tuple[Child, int]] = []  # (process, its HTTP status port)
    sim = None
    sim_thread = None
    events: list[str] = []
    try:
        await _wait_stream(cluster.urls, "URBANSENSE")
        say(f"collectors: 2 processes sharing the durable consumer (status on ports {http_ports})")
        sc = scenario_mod.load(args.scenario)
        if len(sc.gateways) == 2:  # a third between the two: overlapping coverage
            a, b = sc.gateways
            sc.gateways.append({"id": "gw-centre", "x": (a["x"] + b["x"]) / 2, "y": (a["y"] + b["y"]) / 2})
        for i, spec in enumerate(sc.gateways):
            spec["sim_socket"] = str(work / f"air-{i}.sock")
        sim = Simulation(sc, seed=args.seed, nodes=args.nodes, serial="pty")
        sim.open_truth(out / "truth.jsonl")
        nodes = sim.registry()
        by_id = {n.node_id: n for n in nodes}
        counts = Counter(n.kind for n in nodes)
        say(f"scenario: {sc.name}, {len(nodes)} nodes, {len(sim.gateways)} gateways")
        ports = cluster.mqtt_ports
        for i, g in enumerate(sim.gateways):
            gdir = work / g.gw_id
            gdir.mkdir()
            write_registry(gdir / "nodes.jsonl",
                           [NodeSpec(n.node_id, n.kind, bytes.fromhex(n.key_hex)) for n in nodes])
            http_port = free_port()
            cfg_path = gdir / "gateway.toml"
            serial = [n.serial_path for n in nodes
                      if n.transport == "serial" and n.gateway == g.gw_id and n.serial_path]
            # Each gateway starts from a different node: the load spreads over the cluster.
            cfg_path.write_text(_gateway_toml(
                g.gw_id, gdir, [cluster.urls[(i + k) % 3] for k in range(3)],
                [ports[(i + k) % 3] for k in range(3)], str(sc.gateways[i]["sim_socket"]), serial, http_port))
            child = Child("gateway", g.gw_id, cfg_path, out / f"{g.gw_id}.log")
            child.start()
            gateways.append((child, http_port))
        deadline = time.monotonic() + 60
        for child, port in gateways:
            while not ((st := await asyncio.to_thread(gateway_status, port)) and st["broker"]["connected"]):
                if not child.running() or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway {child.name} not connected; log {child.log}")
                await asyncio.sleep(0.2)
        say(f"gateways: {len(gateways)} processes (status on ports {[p for _, p in gateways]})")
        sim_duration_s = args.duration * args.speed
        say(f"running {args.duration:.0f} s of wall time at {args.speed:g}x")
        sim_thread = sim.start_realtime(sim_duration_s, speed=args.speed)
        t0 = time.monotonic()
        stopped_node = killed = False
        while sim_thread.is_alive():
            await asyncio.to_thread(sim_thread.join, 0.5)
            el = time.monotonic() - t0
            if not stopped_node and el > args.duration / 3:
                st = await asyncio.to_thread(gateway_status, gateways[0][1])
                addr = st["broker"]["address"] if st else ""
                idx = next((k for k, n in enumerate(cluster.nodes) if addr.endswith(f":{n.ports.client}")), 0)
                await asyncio.to_thread(cluster.node(idx).stop)
                events.append(f"{el:.0f} s: stopped NATS node n{idx + 1} ({gateways[0][0].name} published through it)")
                say(events[-1])
                stopped_node = True
            if not killed and el > args.duration / 2:
                collectors[0].kill()
                events.append(f"{el:.0f} s: SIGKILLed {collectors[0].name}")
                say(events[-1])
                killed = True
        sim_summary = sim.last_summary or sim.summary()
        say("draining: gateways' outboxes, then the consumer's backlog")
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        drained = False
        while time.monotonic() < deadline:
            statuses = [await asyncio.to_thread(gateway_status, port) for _, port in gateways]
            if all(map(_drained, statuses)) and await _consumer_backlog(cluster.urls) == 0:
                drained = True
                break
            await asyncio.sleep(0.5)
        if not drained:
            say("warning: not drained within the deadline")
        rx = await asyncio.to_thread(read_back, store_url)
        summary = compare(sim, by_id, rx, [])
        t = summary["total"]
        # compare() counts a frame stored by two gateways as one delivery and two copies; here
        # the database is the consumer: "stored" is what it holds, "duplicated" a row twice.
        t["stored"] = t["delivered"]
        t["wrong"] += rx.bad_packs  # a reading stored with no gateway recorded
        summary["readings_rows"] = rx.messages
        summary["readings_without_reception"] = rx.bad_packs
        summary["events"] = events
        summary["simulation"] = {"scenario": sc.name, "seed": sim.seed, "speed": args.speed,
                                 "simulated_s": sim_summary.get("duration_s"),
                                 "nodes": dict(counts), "gateways": [g.gw_id for g in sim.gateways]}
        summary["gateway"] = {}
        for child, port in gateways:
            st = await asyncio.to_thread(gateway_status, port) or {}
            summary["gateway"][child.name] = {
                "accepted": st.get("accepted"), "published_readings": st.get("published", {}).get("readings"),
                "broker": st.get("broker", {}).get("address")}
        summary["store"] = args.store
        summary["wall_s"] = round(time.monotonic() - t_start, 1)
        (out / "city-summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        return summary
    finally:
        if sim is not None and sim_thread is not None and sim_thread.is_alive():
            sim.stop()
            await asyncio.to_thread(sim_thread.join, 10)
        await asyncio.gather(*(asyncio.to_thread(child.stop) for child, _ in gateways))
        if sim is not None:
            sim.close()
        for c in collectors:
            c.stop()
        cluster.stop()
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)  # stores, outboxes, configs; the logs are in out/


def render_city(s: dict[str, Any]) -> str:
    t = s["total"]
    lines = ["", f"urbansense demo --city: {s['simulation']['scenario']}, "
             f"{sum(s['simulation']['nodes'].values())} nodes, {len(s['simulation']['gateways'])} gateways, "
             f"store {s['store']}, {s['wall_s']:.0f} s", ""]
    lines += [f"  {e}" for e in s["events"]]
    lines.append("")
    lines.append(f"{'':10s}{'sent':>8s}{'lost air':>10s}{'stored':>8s}{'missing':>9s}{'dup':>6s}{'wrong':>7s}")
    for kind, c in [*s["per_kind"].items(), ("total", t)]:
        lines.append(f"{kind:10s}{c['sent']:8d}{c['lost_on_air']:10d}{c['delivered']:8d}"
                     f"{c['missing']:9d}{c['duplicated']:6d}{c['wrong']:7d}")
    lines.append(f"(frames heard by more than one gateway, stored once: {t['cross_gateway_copies']} extra receptions)")
    if t["lost_at_gateway"] or t["undecodable"]:
        lines.append(f"(lost at the gateway boundary: {t['lost_at_gateway']}, undecodable: {t['undecodable']})")
    ok = t["duplicated"] == 0 and t["wrong"] == 0 and t["missing"] == 0
    lines.append(f"verdict: {'OK' if ok else 'FAILED'} (missing, duplicated and wrong must be 0)")
    return "\n".join(lines)


def main_city(args: argparse.Namespace) -> int:
    import logging

    from urbansense.broker import BrokerUnavailable

    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.out / "demo.log", filemode="w", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    try:
        summary = asyncio.run(run_city(args))
    except BrokerUnavailable as exc:
        print(f"demo --city: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(summary, sort_keys=True) if args.json else render_city(summary))
    t = summary["total"]
    return 0 if t["missing"] + t["duplicated"] + t["wrong"] == 0 else 1


__all__ = ["main_city", "read_back", "render_city", "run_city"]
