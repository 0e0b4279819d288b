"""The ``memory`` phase of bench_gateway: RSS under sustained load and through broker outages.

Contract: ``phase_memory(ctx, work)`` starts its own mosquitto (it stops it during the
outages), feeds ``ctx["memory_hours"]`` hour-equivalents of the workload's rate as fast as the
pipeline takes them, sampling RSS after each, then stops the broker for an hour's worth of
frames (and, with ``ctx["busy_outage_frames"]``, twice for a busy hour), restarts it and waits
for the outbox to drain; it reports RSS at each step, the outbox's peak, the drain time, the
peak RSS (VmHWM) and whether every reading was published.

Why on its own broker and in its own child: the outages stop the broker, which the other
phases share, and the child's RSS is the figure, so nothing else may live in that process.
"""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path
from typing import Any

from bench.frames import Workload
from bench.gw_harness import (
    RunningGateway,
    broker_pid,
    feed_all,
    gateway_config,
    settle_and_flush,
    start_broker,
    wait_until,
)
from bench.machine import pin_pid_side, proc_status_kb, rss_mib


async def phase_memory(ctx: dict[str, Any], work: Workload) -> dict[str, Any]:
    tmp = Path(ctx["tmp"])
    nodes, per_day = len(work.keys), ctx["per_node_day"]
    per_hour = round(nodes * per_day / 24)
    hours = ctx["memory_hours"]
    busy_outage = ctx.get("busy_outage_frames", 0)
    need = per_hour * (hours + 1) + 2 * busy_outage
    frames = work.frames[:need]
    keys, kinds = work.keys, work.kinds
    del work
    gc.collect()
    broker = start_broker(tmp / "mosquitto")
    try:
        cfg = gateway_config(tmp / "gw", broker.host, broker.port, Workload(keys, kinds, []), per_day)
        rss_before = rss_mib()
        samples: list[dict[str, Any]] = []
        pos = 0
        async with RunningGateway(cfg) as gw:
            m = gw.metrics
            rss_idle = rss_mib()
            t0 = time.perf_counter()
            for h in range(1, hours + 1):
                chunk = frames[pos: pos + per_hour]
                pos += per_hour
                await feed_all(gw, chunk)
                await settle_and_flush(gw, pos)
                await wait_until(lambda p=pos: m.published_readings.total() >= p, 120, f"hour {h} PUBACKs")
                samples.append({"hour": h, "rss_mib": rss_mib(), "outbox_bytes": int(m.outbox_bytes.get())})
            sustained_s = time.perf_counter() - t0
            rss_sustained = rss_mib()

            async def outage(count: int, label: str) -> dict[str, Any]:
                nonlocal pos
                chunk = frames[pos: pos + count]
                pos += count
                rss0 = rss_mib()
                broker.stop()
                await wait_until(lambda: not gw.publisher.connected.is_set(), 30, "publisher to notice")
                committed0 = m.readings_committed.total()
                await feed_all(gw, chunk)
                await settle_and_flush(gw, pos)
                await wait_until(lambda: m.readings_committed.total() >= committed0 + len(chunk), 120,
                                 f"{label}: frames in the outbox")
                peak_bytes, peak_batches = int(m.outbox_bytes.get()), int(m.outbox_depth.get())
                rss_during = rss_mib()
                broker.start()
                pid = broker_pid(broker)
                if pid is not None:
                    pin_pid_side(pid)
                t_restart = time.perf_counter()
                await wait_until(lambda: m.published_readings.total() >= pos, 600, f"{label}: drain")
                drain_s = time.perf_counter() - t_restart
                await asyncio.sleep(1.5)  # one chores tick: acked rows deleted
                return {
                    "frames_during_outage": len(chunk),
                    "outbox_peak_bytes": peak_bytes,
                    "outbox_peak_batches": peak_batches,
                    "outbox_max_bytes_config": cfg.outbox.max_bytes,
                    "outbox_dropped_readings": int(m.outbox_dropped_readings.total()),
                    "rss_mib_before": rss0,
                    "rss_mib_during_outage": rss_during,
                    "rss_mib_after_drain": rss_mib(),
                    "reconnect_and_drain_s": round(drain_s, 2),
                    "outbox_bytes_after_drain": int(m.outbox_bytes.get()),
                }

            realistic = await outage(per_hour, "1-hour outage")
            busy = await outage(busy_outage, "busy outage") if busy_outage else None
            # The same outage again: bounded memory means no further growth the second time.
            busy2 = await outage(busy_outage, "busy outage 2") if busy_outage else None
            published, expected = int(m.published_readings.total()), pos
            hwm = round(proc_status_kb("VmHWM") / 1024, 2)
    finally:
        broker.stop()
    first, last = samples[0]["rss_mib"], samples[-1]["rss_mib"]
    res: dict[str, Any] = {
        "nodes": nodes,
        "frames_per_node_day": per_day,
        "frames_per_hour_equivalent": per_hour,
        "note": ("in-process gateway; RSS of the whole bench child (Python + gateway + the frames "
                 "still to feed, allocated before rss_mib_before_gateway). Time compressed: frames "
                 "fed as fast as the pipeline takes them."),
        "rss_mib_before_gateway": rss_before,
        "rss_mib_gateway_idle": rss_idle,
        "sustained": {
            "hours_simulated": hours,
            "frames": per_hour * hours,
            "wall_s": round(sustained_s, 2),
            "rss_mib_after_hour_1": first,
            f"rss_mib_after_hour_{hours}": last,
            "rss_mib_growth_after_hour_1": round(last - first, 2),
            "rss_mib_per_hour_samples": [s["rss_mib"] for s in samples],
        },
        "rss_mib_after_sustained": rss_sustained,
        "outage_1h": realistic,
        "rss_mib_peak_vmhwm": hwm,
        "every_reading_published": published == expected,
    }
    if busy is not None:
        busy["frames_per_node_hour"] = round(busy_outage / nodes, 1)
        res["outage_busy"] = busy
    if busy is not None and busy2 is not None:
        busy2["frames_per_node_hour"] = round(busy_outage / nodes, 1)
        res["outage_busy_repeat"] = busy2
        res["rss_mib_growth_busy_repeat"] = round(busy2["rss_mib_after_drain"] - busy["rss_mib_after_drain"], 2)
    return res
