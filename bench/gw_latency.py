"""The ``latency`` phase of bench_gateway: a paced load, timed from feed() to an independent subscriber.

Contract: ``phase_latency(ctx, work)`` runs ``paced_latency`` at ``ctx["latency_rate"]`` frames/s
for ``ctx["latency_duration_s"]`` ("busy") and, when ``ctx["latency_quiet_duration_s"]`` is set,
again at the quiet rate, each with a fresh gateway and data dir; each run reports the
percentiles (``pct``: nearest rank) of the time from a frame's ``feed()`` to the arrival of its
(node, fcnt) at ``subscriber_main``, plus frames delivered, duplicates and batches.
``subscriber_main`` is that subscriber: its own process (bench_gateway ``--_subscriber``, pinned
to the side CPU), a paho client on the up topic that prints READY once subscribed and writes
each (node, fcnt)'s first arrival, in monotonic seconds, to a JSON file.

Why another process: the arrival clock must not share the gateway's event loop or GIL, or the
figure would leave out the time the gateway keeps the core busy; CLOCK_MONOTONIC is the same
clock in both processes.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.frames import Workload, frame_key
from bench.gw_harness import (
    UP_TOPIC,
    RunningGateway,
    gateway_config,
    wait_until,
)
from bench.machine import pin_pid_side


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def subscriber_main(host: str, port: int, expect: int, out: str, timeout_s: float) -> int:
    """Independent consumer (own process): arrival time per (node, fcnt), as monotonic s."""
    import paho.mqtt.client as mqtt

    from urbansense.wire.senml_reader import frames_from_pack

    arrivals: dict[str, float] = {}
    done = {"dup": 0}

    def on_message(c: Any, u: Any, msg: Any) -> None:
        t = time.monotonic()
        for node_id, fcnt, _ in frames_from_pack(msg.payload):
            k = f"{node_id}:{fcnt}"
            if k in arrivals:
                done["dup"] += 1
            else:
                arrivals[k] = t

    def on_subscribe(*a: Any) -> None:
        print("READY", flush=True)

    api = mqtt.CallbackAPIVersion.VERSION2  # type: ignore[attr-defined]
    c = mqtt.Client(api, client_id="bench-latency-sub", protocol=mqtt.MQTTv311)
    c.on_message = on_message
    c.on_subscribe = on_subscribe
    c.on_connect = lambda cl, *a: cl.subscribe(UP_TOPIC, qos=1)
    c.connect(host, port)
    deadline = time.monotonic() + timeout_s
    while len(arrivals) < expect and time.monotonic() < deadline:
        c.loop(timeout=0.05)
    c.disconnect()
    Path(out).write_text(json.dumps({"arrivals": arrivals, "duplicates": done["dup"]}))
    return 0


async def paced_latency(ctx: dict[str, Any], work: Workload, frames: list[bytes], rate: float,
                        tag: str) -> dict[str, Any]:
    tmp = Path(ctx["tmp"]) / tag
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "arrivals.json"
    n = len(frames)
    cfg = gateway_config(tmp, ctx["host"], ctx["port"], work, ctx["per_node_day"])
    max_age = cfg.batch.max_age_s
    sub = subprocess.Popen(  # noqa: ASYNC220  (starts and returns; waited for in an executor)
        [sys.executable, "-m", "bench.bench_gateway", "--_subscriber", ctx["host"], str(ctx["port"]),
         str(n), str(out), str(n / rate + max_age + 30)],
        cwd=ctx["bench_root"], stdout=subprocess.PIPE, text=True,
    )
    pin_pid_side(sub.pid)
    assert sub.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, sub.stdout.readline)
    if line.strip() != "READY":
        raise RuntimeError(f"latency subscriber did not start: {line!r}")
    sent: dict[str, float] = {}
    async with RunningGateway(cfg) as gw:
        t0 = time.monotonic()
        for i, f in enumerate(frames):
            target = t0 + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            node_id, fcnt = frame_key(f)
            sent[f"{node_id}:{fcnt}"] = time.monotonic()
            if not gw.feed(f, "bench"):
                raise RuntimeError("ingress full at a paced rate")
        await wait_until(lambda: gw.metrics.published_readings.total() >= n, max_age + 60, "paced PUBACKs", 0.01)
        batches = gw.metrics.published_batches.total()
    rc = await asyncio.get_running_loop().run_in_executor(None, sub.wait, 60)
    data: dict[str, Any] = (json.loads(out.read_text()) if rc == 0 and out.exists()
                            else {"arrivals": {}, "duplicates": 0})
    arrivals: dict[str, float] = data["arrivals"]
    lat_ms = [(arrivals[k] - t) * 1000 for k, t in sent.items() if k in arrivals]
    return {
        "rate_frames_per_s": rate,
        "duration_s": round(n / rate, 1),
        "frames_sent": n,
        "frames_delivered": len(lat_ms),
        "duplicates_at_subscriber": data["duplicates"],
        "batches": int(batches),
        "frames_per_batch_mean": round(n / batches, 1) if batches else 0,
        "latency_ms_p50": round(pct(lat_ms, 0.50), 1),
        "latency_ms_p90": round(pct(lat_ms, 0.90), 1),
        "latency_ms_p99": round(pct(lat_ms, 0.99), 1),
        "latency_ms_max": round(max(lat_ms), 1) if lat_ms else None,
        "latency_ms_mean": round(statistics.fmean(lat_ms), 1) if lat_ms else None,
    }


async def phase_latency(ctx: dict[str, Any], work: Workload) -> dict[str, Any]:
    from gateway.config import BatchConfig

    d = BatchConfig()
    res: dict[str, Any] = {
        "batch_settings": {"max_records": d.max_records, "max_bytes": d.max_bytes,
                           "max_age_s": d.max_age_s, "ack_max_delay_ms": d.ack_max_delay_ms},
        "clock": "CLOCK_MONOTONIC (shared by the feeding and subscribing processes)",
        "path": "feed() -> verify -> batch -> outbox commit (fsync) -> PUBLISH -> mosquitto -> subscriber",
    }
    rate, dur = ctx["latency_rate"], ctx["latency_duration_s"]
    n = int(rate * dur)
    res["busy"] = await paced_latency(ctx, work, work.frames[:n], rate, "busy")
    if ctx.get("latency_quiet_duration_s"):
        qrate, qdur = ctx["latency_quiet_rate"], ctx["latency_quiet_duration_s"]
        # fresh gateway state (own data dir), so counters restart from the workload's start
        res["quiet"] = await paced_latency(ctx, work, work.frames[: int(qrate * qdur)], qrate, "quiet")
    return res
