"""The city path under failure, all real parts: gateways -> NATS cluster (MQTT listener) ->
JetStream (R3) -> collectors -> PostgreSQL. Nothing a gateway had acknowledged is lost and
nothing is stored twice when a NATS node stops under load or a collector is SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from collector.app import Collector
from collector.config import CollectorConfig, SourceConfig
from gateway.app import Gateway
from gateway.config import BrokerAddress
from tests.test_city_puback import place_stream_leader
from tests.test_collector import _nats_publish, pack
from tests.test_gw_support import frame, make_config, wait_for
from urbansense.broker import free_port

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[1]


def _collector(cluster: Any, pg: Any, name: str) -> Collector:
    return Collector(CollectorConfig(
        collector_id=name, source=SourceConfig(kind="jetstream", servers=cluster.urls, ack_wait_s=5.0),
        store_url=pg.dsn, http_port=0, max_messages=64, fetch_timeout_s=0.2))


def _count(pg: Any, sql: str) -> Any:
    import psycopg

    with psycopg.connect(pg.dsn) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row and len(row) == 1 else row


async def test_gateways_fail_over_between_nats_nodes_and_each_reading_is_stored_once(
        tmp_path: Path, nats_cluster: Any, pg_server: Any) -> None:
    """The node gw0 publishes through is also the stream's leader when it stops (the worst
    case: gw1 keeps publishing through another node while the stream elects a new leader).
    With ``publish.backend = "mqtt"`` the batches PUBACKed in that gap were lost: the
    intermittent "every reception stored" timeout (one fresh-clone CI run in four), three runs
    in four once the leaders are placed as here; tests/test_city_puback.py shows it every run."""
    import nats

    cols = [_collector(nats_cluster, pg_server, f"c{i}") for i in range(2)]
    col_tasks = [asyncio.create_task(c.run()) for c in cols]
    gws: list[Gateway] = []
    gw_tasks: list[asyncio.Task[None]] = []
    nodes = range(1, 21)
    nc = await nats.connect(servers=nats_cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        # 60 s: a fresh cluster's first stream and consumer on a loaded machine (once over 30 s at
        # load 8: the consumer create timed out, now retried by the collector).
        await asyncio.wait_for(asyncio.gather(*(c.started.wait() for c in cols)), 60)
        ports = nats_cluster.mqtt_ports
        for g in range(2):
            (tmp_path / f"gw{g}").mkdir()
            cfg = make_config(tmp_path / f"gw{g}", SimpleNamespace(host="127.0.0.1", port=ports[g]),
                              nodes=nodes, gateway_id=f"gw{g}")
            # All three nodes, each gateway starting from a different one.
            cfg.publish.backend = "jetstream"
            cfg.publish.servers = [nats_cluster.urls[(g + i) % 3] for i in range(3)]
            cfg.mqtt.brokers = [BrokerAddress("127.0.0.1", ports[(g + i) % 3]) for i in range(3)]
            cfg.mqtt.protocol = "3.1.1"
            gw = Gateway(cfg)
            gws.append(gw)
            gw_tasks.append(asyncio.create_task(gw.run()))
        for gw in gws:
            await asyncio.wait_for(gw.started.wait(), 10)
            assert gw.publisher is not None
            await asyncio.wait_for(gw.publisher.connected.wait(), 20)
        first = gws[0].publisher.broker if gws[0].publisher else None
        victim = [f"127.0.0.1:{n.ports.client}" for n in nats_cluster.nodes].index(str(first))
        # ... and the MQTT listener's own stream elsewhere: with publish.backend = "mqtt" this
        # loses the batches PUBACKed in the gap (3 runs in 4 when tried). $MQTT_msgs exists only
        # once the downlink listener's MQTT session has made it, which may not have happened yet
        # (a KeyError here failed one run on main at load 8).
        await place_stream_leader(nc, lambda ld: ld["URBANSENSE"] == victim != ld.get("$MQTT_msgs"),
                                  move=("URBANSENSE", "$MQTT_msgs"))

        sent = 0
        for fcnt in range(1, 61):
            for n in nodes:
                data = frame(n, fcnt)
                for gw in gws:  # overlapping coverage: both gateways hear every frame
                    gw.feed(data, "t", rssi_dbm=-60 - 10 * gws.index(gw))
                sent += 1
            if fcnt == 20:  # under load: stop the node gw0 publishes through, the stream's leader
                await asyncio.to_thread(nats_cluster.node(victim).stop)
            await asyncio.sleep(0.05)
        await wait_for(lambda: all(gw.publisher is not None and gw.publisher.broker not in ("", first)
                                   for gw in gws[:1]), timeout_s=30, what="gw0 on another node")
        await wait_for(lambda: all(gw.metrics.published_readings.total() >= gw.metrics.frames_accepted.total()
                                   and gw.metrics.outbox_depth.get() == 0 for gw in gws),
                       timeout_s=60, what="gateways drained")
        assert all(gw.metrics.frames_accepted.total() == sent for gw in gws)
        await wait_for(lambda: _count(pg_server, "SELECT COUNT(*) FROM receptions") >= 2 * sent,
                       timeout_s=60, what="every reception stored")
    finally:
        for gw in gws:
            await gw.stop()
        await asyncio.gather(*gw_tasks, return_exceptions=True)
        for c in cols:
            await c.stop()
        await asyncio.gather(*col_tasks)
        await nc.close()
    assert _count(pg_server, "SELECT COUNT(*), COUNT(DISTINCT (node_id, fcnt)) FROM readings") == (sent, sent)
    assert _count(pg_server, "SELECT COUNT(*) FROM receptions") == 2 * sent
    assert _count(pg_server, "SELECT COUNT(*) FROM (SELECT node_id, fcnt FROM receptions "
                             "GROUP BY 1, 2 HAVING COUNT(*) = 2) x") == sent
    assert _count(pg_server, "SELECT COUNT(*) FROM v_node_heard_by") == 2 * len(nodes)
    assert sum(c.metrics.stored.total() for c in cols) == sent


class CollectorProcess:
    """``urbansense collector run`` as a child process (SIGKILLed by the test)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "urbansense", "collector", "run", "--config", str(self.config)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

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


async def test_collectors_sigkilled_at_random_points_lose_nothing_and_store_nothing_twice(
        tmp_path: Path, nats_cluster: Any, pg_server: Any) -> None:
    rng = random.Random(13)
    servers = ", ".join(f'"{u}"' for u in nats_cluster.urls)
    procs = []
    ports = [free_port(), free_port()]
    for i in range(2):
        cfg = tmp_path / f"c{i}.toml"
        cfg.write_text(f'[collector]\nid = "c{i}"\n[source]\nkind = "jetstream"\nservers = [{servers}]\n'
                       f'ack_wait_s = 2.0\n[store]\nurl = "postgresql://urbansense@127.0.0.1:{pg_server.port}/urbansense"\n'
                       f'[batch]\nmax_messages = 32\nfetch_timeout_s = 0.2\n[http]\nport = {ports[i]}\n')
        procs.append(CollectorProcess(cfg, tmp_path / f"c{i}.log"))
    try:
        for p in procs:
            p.start()
        await _wait_for_stream(nats_cluster, "URBANSENSE")  # the first collector creates it
        total = 0
        kills = 0
        for round_ in range(8):
            items = [(f"urbansense.v1.a.gw{g}.up", pack([(n, round_ * 10 + f) for n in range(1, 26)]))
                     for f in range(1, 11) for g in (1, 2)]
            total += 10 * 25
            v = rng.randrange(2)
            # Kill it while it works: up and fetching when the round is published, killed a
            # random part of a second later (mid-batch, mid-commit, between commit and ack).
            await wait_for(lambda v=v: _readings_in(ports[v]) >= 0, timeout_s=30, what="victim up")
            await _nats_publish(nats_cluster, items)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            victim = procs[v]
            await asyncio.to_thread(victim.kill)
            kills += 1
            victim.start()
        await wait_for(lambda: _count(pg_server, "SELECT COUNT(*) FROM receptions") >= 2 * total
                       if _table_exists(pg_server) else False, timeout_s=90, what="everything stored")
    finally:
        for p in procs:
            p.stop()
    assert kills == 8
    assert _count(pg_server, "SELECT COUNT(*), COUNT(DISTINCT (node_id, fcnt)) FROM readings") == (total, total)
    assert _count(pg_server, "SELECT COUNT(*) FROM receptions") == 2 * total


async def _wait_for_stream(cluster: Any, name: str, timeout_s: float = 30.0) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(servers=cluster.urls)
    try:
        js = nc.jetstream(timeout=5)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                await js.stream_info(name)
                return
            except (NotFoundError, nats.errors.TimeoutError):  # a loaded machine: ask again
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


def _readings_in(port: int) -> float:
    """A collector's decoded frames since it started (-1 while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=1) as resp:
            return float(json.load(resp)["readings_in"])
    except (OSError, ValueError):
        return -1.0


def _table_exists(pg: Any) -> bool:
    return bool(_count(pg, "SELECT to_regclass('receptions') IS NOT NULL"))
