"""Throughput phases of bench_gateway: ``throughput`` (our pipeline) and ``baseline`` (its JSON peer).

Contract: ``phase_throughput(ctx, work)`` runs an in-process gateway (deployed defaults, or
``ctx["batch_overrides"]``) against the broker at ``ctx["host"]:ctx["port"]``, feeds the first
``ctx["frames"]`` frames as fast as the ingress queue takes them and returns, once every reading
is PUBACKed, the wall and CPU time per frame, batches, bytes per reading at the broker (payload,
and on the wire with ``mqtt_wire_overhead_bytes``) and on disk (``/proc/self/io``), plus a
cProfile table when ``ctx["profile"]``. ``phase_baseline(ctx, work)`` runs bench/baseline_json.py
(one JSON message per reading at QoS 1) on the same frames and reshapes its result so that the
two dicts compare key for key. Both run in bench_gateway's pinned phase child.

Why together: the throughput claim is a ratio to the baseline (same frames, same broker, same
pinning), and both sides' byte figures must be counted the same way.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from bench.frames import Workload
from bench.gw_harness import (
    UP_TOPIC,
    RunningGateway,
    feed_all,
    gateway_config,
    log,
    wait_until,
)
from bench.machine import proc_io


def mqtt_wire_overhead_bytes(topic: str, payload_len: int, v5: bool, content_type: str) -> int:
    """PUBLISH bytes around the payload: fixed header, topic, packet id, v5 properties."""
    props = (1 + 1 + 2 + len(content_type)) if v5 else 0
    var = 2 + len(topic) + 2 + props
    remaining = var + payload_len
    rl = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2_097_152 else 4
    return 1 + rl + var


async def phase_throughput(ctx: dict[str, Any], work: Workload) -> dict[str, Any]:
    from urbansense.wire.senml import CONTENT_TYPE

    frames = work.frames[: ctx["frames"]]
    n = len(frames)
    cfg = gateway_config(Path(ctx["tmp"]), ctx["host"], ctx["port"], work, ctx["per_node_day"])
    for k, v in ctx.get("batch_overrides", {}).items():
        setattr(cfg.batch, k, v)
    profiler = None
    async with RunningGateway(cfg) as gw:
        m = gw.metrics
        gc.collect()
        disk0, wb0 = m.disk_bytes_written.total(), proc_io("write_bytes")
        if ctx.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await feed_all(gw, frames)
        await wait_until(lambda: m.published_readings.total() >= n, 600, "all PUBACKs", 0.002)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        if profiler is not None:
            profiler.disable()
        disk = m.disk_bytes_written.total() - disk0
        block = proc_io("write_bytes") - wb0
        batches = m.published_batches.total()
        pub_bytes = m.published_bytes.total()
        readings = m.published_readings.total()
        committed = m.readings_committed.total()
        v5 = gw.publisher.protocol == "5"
        lat_p50, lat_p99 = m.publish_latency.quantile(0.5), m.publish_latency.quantile(0.99)
        rejected = m.rejections.total()
        drops = m.queue_drops.total()
    avg_payload = pub_bytes / batches if batches else 0
    wire = pub_bytes + batches * mqtt_wire_overhead_bytes(UP_TOPIC, int(avg_payload), v5, CONTENT_TYPE)
    out: dict[str, Any] = {
        "frames": n,
        "wall_s": round(wall, 3),
        "frames_per_s": round(n / wall, 1),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_frame": round(cpu / n * 1e6, 2),
        "cpu_utilisation_pct": round(cpu / wall * 100, 1),
        "batches": int(batches),
        "frames_per_batch_mean": round(readings / batches, 1) if batches else 0,
        "rejected": int(rejected),
        "queue_drops": int(drops),
        "mqtt_protocol": gw.publisher.protocol,
        "publish_to_puback_s_p50_bucket": lat_p50,
        "publish_to_puback_s_p99_bucket": lat_p99,
        "broker_payload_bytes_per_reading": round(pub_bytes / readings, 2),
        "broker_wire_bytes_per_reading": round(wire / readings, 2),
        "payload_bytes_per_batch_mean": round(avg_payload, 1),
        "disk_write_syscall_bytes_per_reading": round(disk / committed, 1) if committed else None,
        "disk_block_write_bytes_per_reading": round(block / committed, 1) if committed else None,
    }
    if profiler is not None:
        import io
        import pstats

        buf = io.StringIO()
        st = pstats.Stats(profiler, stream=buf)
        st.sort_stats("tottime").print_stats(30)
        log("cProfile, sorted by tottime (throughput phase):\n" + buf.getvalue())
        buf2 = io.StringIO()
        pstats.Stats(profiler, stream=buf2).sort_stats("cumulative").print_stats(40)
        log("cProfile, sorted by cumulative:\n" + buf2.getvalue())
        rows = []
        for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            rows.append((tt, ct, nc, f"{Path(file).name}:{line}({fn})"))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows) or 1.0
        out["profile_top_tottime"] = [
            {"function": r[3], "tottime_us_per_frame": round(r[0] / n * 1e6, 2),
             "share_pct": round(r[0] / total * 100, 1), "calls": r[2]}
            for r in rows[:15]
        ]
    return out


def phase_baseline(ctx: dict[str, Any], work: Workload) -> dict[str, Any]:
    from bench import baseline_json

    sub = Workload(work.keys, work.kinds, work.frames[: ctx["frames"]])
    gc.collect()
    res = baseline_json.run(ctx["host"], ctx["port"], sub)
    res["broker_wire_bytes_per_reading"] = round(res.pop("mqtt_bytes_per_reading"), 2)
    res["broker_payload_bytes_per_reading"] = round(
        res["broker_wire_bytes_per_reading"] - (len(baseline_json.TOPIC) + 6), 2)
    res["frames_per_s"] = round(res["frames_per_s"], 1)
    res["cpu_us_per_frame"] = round(res["cpu_us_per_frame"], 2)
    res["wall_s"] = round(res["wall_s"], 3)
    res["mqtt_protocol"] = "3.1.1"
    res["messages_per_reading"] = 1
    return res
