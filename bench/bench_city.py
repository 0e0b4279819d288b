"""The city path at city size: a day of 100,000 nodes through the 3-node cluster into PostgreSQL.

Not the simulator (that is bench_sim's figure): the day's packs are generated as the gateways
would publish them, published into the cluster's stream, then drained by two collector
processes (bench/drain.py) into a private PostgreSQL, and the database is checked against
what was generated (the ledger).

The day (deterministic from ``--seed``):
- kinds by node id: 40 % parking, 20 % bins, 40 % water meters; frames per node and day:
  parking 44 (10 arrivals, 10 departures, 24 hourly heartbeats), bins 8, water 24 (hourly):
  the rates of the simulator's city-10k run (bench/RESULTS.md: 288,189 frames from 10,000
  nodes in a day, 28.8 per node), at times drawn uniformly over the day;
- one gateway per 625 nodes on a square grid (city-10k's density: 16 for 10,000 nodes);
  each node is heard by the gateway of its cell and, with overlapping coverage, by the next
  one (45 %) or the next two (25 %): 1.95 receptions per frame; nothing lost on air;
- each gateway batches as its defaults do (docs/GATEWAY.md): a pack leaves at 100 frames or
  when its oldest frame is ``batch.max_age_s`` (5 s) old, in the gateway's compact encoding
  (``encode_compact``, as the batcher writes), on ``urbansense.v1.city.<gw>.up``; all packs
  are published in the order of their departure on the subjects the cluster's MQTT listener
  feeds, and the stream's message count is checked before the drain starts.

Ledger: every generated (node, fcnt) in ``readings`` once (missing, extra), every reception in
``receptions`` (missing), values checked per kind (wrong), and the collectors' stored counts
against the table.

Prints one JSON object (``urbansense bench --only city``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY_S = 86_400
FRAMES_PER_DAY = {"parking": 44, "bin": 8, "water": 24}
NODES_PER_GATEWAY = 625
HEARD_BY = ((1, 0.30), (2, 0.45), (3, 0.25))  # gateways per node, share of nodes
T0 = 1_796_256_000  # 2026-12-01 00:00 UTC


def kind_of(node: int) -> str:
    return ("parking", "parking", "bin", "water", "water")[node % 5]


def _values(kind: str, fcnt: int) -> dict[int, int | bool]:
    from urbansense.wire import quantities as q

    if kind == "parking":
        return {q.Q_OCCUPIED: fcnt % 2 == 1, q.Q_BATTERY_MV: 3600}
    if kind == "bin":
        return {q.Q_FILL_PCT: fcnt * 13 % 101, q.Q_DISTANCE_MM: 1000, q.Q_BATTERY_MV: 3600}
    return {q.Q_VOLUME_L: 100_000 + fcnt * 7, q.Q_ALARMS: 0, q.Q_BATTERY_MV: 3600}


def day(nodes: int, seed: int, max_age_s: float = 5.0, max_frames: int = 100) -> dict[str, Any]:
    """The day's packs, (departure time, subject, bytes) in departure order, and its ledger."""
    from urbansense.wire.senml import FrameRecord, encode_compact

    rng = random.Random(seed)
    side = math.ceil(math.sqrt(max(1, math.ceil(nodes / NODES_PER_GATEWAY))))
    heard: list[list[tuple[float, int, int, int]]] = [[] for _ in range(side * side)]
    frames = receptions = 0
    for node in range(nodes):
        i, j = rng.randrange(side), rng.randrange(side)
        cells = [i * side + j, ((i + 1) % side) * side + j, i * side + (j + 1) % side]
        r = rng.random()
        n_gw = 1 if r < HEARD_BY[0][1] else 2 if r < HEARD_BY[0][1] + HEARD_BY[1][1] else 3
        gws = cells[:min(n_gw, len(set(cells)))]
        k = FRAMES_PER_DAY[kind_of(node)]
        for fcnt, t in enumerate(sorted(rng.random() * DAY_S for _ in range(k)), 1):
            for rank, g in enumerate(gws):
                heard[g].append((t + 0.05 * rank, node, fcnt, -60 - 10 * rank - rng.randrange(10)))
        frames += k
        receptions += k * len(gws)
    packs: list[tuple[float, str, bytes]] = []
    for g, got in enumerate(heard):
        got.sort()
        subject = f"urbansense.v1.city.gw-{g:03d}.up"
        start = 0
        while start < len(got):
            opened = got[start][0]
            end = start
            while end < len(got) and end - start < max_frames and got[end][0] < opened + max_age_s:
                end += 1
            leaves = got[end - 1][0] if end - start == max_frames else opened + max_age_s
            batch = [FrameRecord(n, f, 1, _values(kind_of(n), f), T0 + t, rssi)
                     for t, n, f, rssi in got[start:end]]
            packs.append((leaves, subject, encode_compact(batch)))
            start = end
    packs.sort(key=lambda p: p[0])
    return {"packs": packs, "frames": frames, "receptions": receptions, "gateways": side * side}


async def publish(urls: list[str], packs: list[tuple[float, str, bytes]], stream: str = "URBANSENSE") -> float:
    """Publish every pack and wait until the stream holds them all; seconds taken.

    Plain NATS publishes, which the stream captures like the MQTT listener's (an acknowledged
    JetStream publish per pack measured 2,700 packs/s here, a day's millions would take an hour);
    what counts is checked after: the stream's message count."""
    import nats

    nc = await nats.connect(servers=urls)
    t0 = time.monotonic()
    try:
        js = nc.jetstream(timeout=60)
        before = (await js.stream_info(stream)).state.messages
        for i, (_, subject, data) in enumerate(packs, 1):
            await nc.publish(subject, data)
            if i % 2000 == 0:
                await nc.flush(timeout=60)
        await nc.flush(timeout=60)
        deadline = time.monotonic() + 600
        while (await js.stream_info(stream)).state.messages - before < len(packs):
            if time.monotonic() > deadline:
                got = (await js.stream_info(stream)).state.messages - before
                raise RuntimeError(f"the stream took {got} of {len(packs)} packs")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()
    return time.monotonic() - t0


_K = "CASE node_id % 5 WHEN 0 THEN 44 WHEN 1 THEN 44 WHEN 2 THEN 8 ELSE 24 END"


def ledger(dsn: str, nodes: int, frames: int, receptions: int) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dsn) as c:
        def one(sql: str) -> int:
            row = c.execute(sql).fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        in_range = one(f"SELECT COUNT(*) FROM readings WHERE node_id < {nodes} AND fcnt BETWEEN 1 AND {_K}")
        total = one("SELECT COUNT(*) FROM readings")
        heard = one("SELECT COUNT(*) FROM receptions")
        wrong = one(
            "SELECT COUNT(*) FROM readings WHERE CASE node_id % 5 "
            "WHEN 2 THEN fill_ratio IS NULL OR abs(fill_ratio - (fcnt * 13 % 101) / 100.0) > 1e-9 "
            "WHEN 3 THEN volume_m3 IS NULL OR abs(volume_m3 - (100000 + fcnt * 7) / 1000.0) > 1e-9 "
            "WHEN 4 THEN volume_m3 IS NULL OR abs(volume_m3 - (100000 + fcnt * 7) / 1000.0) > 1e-9 "
            "ELSE occupied IS NULL OR occupied <> (fcnt % 2 = 1) END "
            "OR battery_v IS NULL OR abs(battery_v - 3.6) > 1e-9")
        states = one("SELECT COUNT(*) FROM node_state")
        stale = one(f"SELECT COUNT(*) FROM node_state WHERE last_fcnt <> {_K}")
    return {"sent": frames, "stored": total, "missing": frames - in_range, "extra": total - in_range,
            "receptions_sent": receptions, "receptions_stored": heard,
            "receptions_missing": receptions - heard, "wrong": wrong,
            "node_state_rows": states, "node_state_not_latest": stale}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from urbansense.natscluster import NatsCluster
    from urbansense.pgserver import PgServer

    t0 = time.monotonic()
    d = day(args.nodes, args.seed)
    packs = d.pop("packs")
    result: dict[str, Any] = {
        "nodes": args.nodes, "gateways": d["gateways"], "frames": d["frames"],
        "receptions": d["receptions"], "messages": len(packs),
        "frames_per_message": round(d["receptions"] / len(packs), 2),
        "message_bytes": sum(len(p[2]) for p in packs),
        "generate_s": round(time.monotonic() - t0, 1), "collectors": args.collectors,
        "max_messages": args.max_messages, "load_average_1m": round(os.getloadavg()[0], 1),
        "cores": os.cpu_count()}
    tmp = Path(tempfile.mkdtemp(prefix="urbansense-bench-city-"))
    try:
        with NatsCluster(tmp / "nats") as cluster, PgServer() as pg:
            result |= await _run(cluster, pg, packs, d, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the stream's replicas: gigabytes at city size
    led = result["ledger"]
    result["ok"] = (led["missing"] == led["extra"] == led["receptions_missing"] == led["wrong"] == 0
                    and led["node_state_not_latest"] == 0 and led["node_state_rows"] == args.nodes
                    and result["drain"]["stored"] == led["stored"])
    return result


async def _run(cluster: Any, pg: Any, packs: list[tuple[float, str, bytes]], d: dict[str, Any],
               args: argparse.Namespace) -> dict[str, Any]:
    from bench.bench_collector import nats_pids, pg_pid
    from bench.drain import drain
    from collector.config import SourceConfig
    from collector.sources import JetStreamSource

    setup = JetStreamSource(SourceConfig(kind="jetstream", servers=cluster.urls), "setup")
    await setup.start()  # the stream exists before anything is published
    await setup.close()
    publish_s = round(await publish(cluster.urls, packs), 1)
    packs.clear()  # the stream has them: free the memory before the drain
    drained = await drain(servers=cluster.urls, store_url=pg.dsn, durable="city",
                          workers=args.collectors, max_messages=args.max_messages,
                          pg_pid=pg_pid(pg), nats_pids=nats_pids(cluster))
    return {"publish_s": publish_s, "drain": drained,
            "ledger": ledger(pg.dsn, args.nodes, d["frames"], d["receptions"])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--collectors", type=int, default=2)
    p.add_argument("--max-messages", type=int, default=1024, help="the collectors' batch.max_messages")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
