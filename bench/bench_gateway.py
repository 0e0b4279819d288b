"""Gateway benchmark: the whole pipeline against a private mosquitto, with the JSON peer.

Run: .venv/bin/python -m bench.bench_gateway [--frames 100000] [--nodes 1000] [--quick] [--profile]
     [--phases throughput,...] [--skip baseline,...]
Prints ONE JSON object on stdout (figures carry their unit in their key); logs go to stderr.

Each phase runs in a fresh child process pinned to CPU 0 (``os.sched_setaffinity``); mosquitto
(and the latency subscriber) are pinned to CPU 1 when the machine has one, so the broker does
not share the measured core. Phases:

- ``throughput``: N frames fed as fast as the ingress queue takes them, through verify, dedup,
  batch, outbox commit (synchronous=full, one fsync per batch), publish and PUBACK, with the
  default batch settings; done when ``published_readings`` reaches N.
- ``baseline``: bench/baseline_json.py (verify, then one ThingsBoard-style JSON message per
  reading at QoS 1 with paho) on the same frames, same broker, same pinning.
- ``latency``: a paced load; each frame's send time against the arrival time of its (node,
  fcnt) at an independent paho subscriber running in its own process.
- ``memory``: RSS while feeding hour-equivalents of realistic load as fast as possible, then a
  broker outage of one hour's worth of frames, restart and drain (own broker, it is stopped).
- ``cpu_share``: the gateway idle, then a real-time low-rate load where each frame travels
  alone (its own commit, publish and ack delete, as at realistic per-node rates), giving the
  fixed and the per-frame cost, projected to 100 nodes and to a Raspberry Pi 4 core.
- ``serial_rates`` and ``ble_foreign``: bench/bench_cost.py and bench/bench_ble.py.

This module is the driver: the arguments, one child per phase (``run_child``/``child_main``),
the ``--previous`` tree, and the JSON with its summary. The phases live in bench/gw_throughput.py,
gw_latency.py, gw_memory.py and gw_cpu_share.py, the gateway they run in bench/gw_harness.py,
pinning and /proc counters in bench/machine.py. The children's entry points (``--_phase``,
``--_subscriber``, ``--_serial_writer``, ``--_ble_sender``) stay here: children are started as
``python -m bench.bench_gateway``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.frames import Workload, frame_key, make_workload  # noqa: E402
from bench.gw_cpu_share import PI4_SLOWDOWN, phase_cpu_share  # noqa: E402
from bench.gw_harness import broker_pid, log, start_broker  # noqa: E402
from bench.gw_latency import phase_latency, subscriber_main  # noqa: E402
from bench.gw_memory import phase_memory  # noqa: E402
from bench.gw_throughput import phase_baseline, phase_throughput  # noqa: E402
from bench.machine import (  # noqa: E402
    GATEWAY_CPU,
    cpu_model,
    mosquitto_version,
    pin_self,
    side_cpus,
)
from bench.trees import GATEWAY_PACKAGES, previous_tree  # noqa: E402

BLE_ADV_LIMIT_BYTES = 31
AD_OVERHEAD_BYTES = 4  # AD length, AD type 0xFF, company id (docs/PROTOCOL.md section 6)
FLOOR_FRAMES_PER_S = 20_000
# Under callgrind (~50x slower, time dilated): frames per rate, enough for a few batches each.
CALLGRIND_RATES = [[0, 300], [500, 200], [100, 60]]
BLE_CALLGRIND_DILATION = 10.0
PHASES = {"throughput": 900, "baseline": 900, "latency": 300, "cpu_share": 300, "memory": 1200,
          "serial_rates": 900, "ble_foreign": 300}  # timeout_s


# -- child entry -----------------------------------------------------------------------------


def child_main(phase: str, ctx_path: str) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ctx = json.loads(Path(ctx_path).read_text())
    if ctx.get("code_root"):  # measure the gateway of another tree (--previous) with this bench
        sys.path.insert(0, ctx["code_root"])
    pinned = pin_self()
    with open(ctx["workload"], "rb") as f:
        work: Workload = pickle.load(f)
    if phase == "throughput":
        res = asyncio.run(phase_throughput(ctx, work))
    elif phase == "baseline":
        res = phase_baseline(ctx, work)
    elif phase == "latency":
        res = asyncio.run(phase_latency(ctx, work))
    elif phase == "memory":
        res = asyncio.run(phase_memory(ctx, work))
    elif phase == "cpu_share":
        res = asyncio.run(phase_cpu_share(ctx, work))
    elif phase == "serial_rates":
        from bench.bench_cost import phase_serial_rates

        res = asyncio.run(phase_serial_rates(ctx, work))
    elif phase == "ble_foreign":
        from bench.bench_ble import phase_ble_foreign

        res = asyncio.run(phase_ble_foreign(ctx, work))
    else:
        raise SystemExit(f"unknown phase {phase}")
    res["pinned_cpus"] = pinned
    print(json.dumps(res))
    return 0


def run_child(phase: str, ctx: dict[str, Any], tmp: Path, timeout_s: float, tag: str = "",
              callgrind: bool = False) -> dict[str, Any]:
    """One phase in a child process; ``tag`` names a variant (another tree, callgrind)."""
    name = phase + (f"-{tag}" if tag else "")
    ctx_path = tmp / f"ctx-{name}.json"
    ctx = {**ctx, "tmp": str(tmp / name), "bench_root": str(ROOT)}
    ctx_path.write_text(json.dumps(ctx))
    log(f"phase {name} ...")
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "bench.bench_gateway", "--_phase", phase, str(ctx_path)]
    env = dict(os.environ)
    if callgrind:
        out = tmp / f"callgrind-{name}"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no", *cmd]
        env.update(BENCH_CALLGRIND="1", BENCH_CALLGRIND_OUT=str(out))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout_s,
                              check=False, env=env)
    except subprocess.TimeoutExpired:  # one phase hung: the others' figures are still reported
        log(f"phase {name} TIMED OUT after {timeout_s}s")
        return {"error": f"timeout {timeout_s}s"}
    if proc.returncode != 0:
        log(f"phase {name} FAILED (exit {proc.returncode})")
        return {"error": f"exit {proc.returncode}"}
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"phase {name} done in {time.monotonic() - t0:.1f}s")
    return res


# -- parent -----------------------------------------------------------------------------------


def on_air(work: Workload) -> dict[str, Any]:
    by_kind: dict[str, list[int]] = {}
    for f in work.frames:
        by_kind.setdefault(work.kinds[frame_key(f)[0]], []).append(len(f))
    allf = [len(f) for f in work.frames]
    return {
        "frame_bytes_mean": round(statistics.fmean(allf), 2),
        "frame_bytes_max": max(allf),
        "advert_bytes_max": max(allf) + AD_OVERHEAD_BYTES,
        "advert_limit_bytes": BLE_ADV_LIMIT_BYTES,
        "frame_limit_bytes": BLE_ADV_LIMIT_BYTES - AD_OVERHEAD_BYTES,
        "by_kind": {k: {"frame_bytes_mean": round(statistics.fmean(v), 2), "frame_bytes_max": max(v),
                        "advert_bytes_max": max(v) + AD_OVERHEAD_BYTES}
                    for k, v in sorted(by_kind.items())},
        "note": "advert = frame + 4 (AD length, type 0xFF, 16-bit company id); no Flags AD",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=None, help="throughput frames (default 100000; quick 10000)")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--frames-per-node-day", type=float, default=50.0)
    ap.add_argument("--quick", action="store_true", help="smoke test, < 60 s")
    ap.add_argument("--profile", action="store_true", help="cProfile the throughput phase (stderr)")
    ap.add_argument("--phases", default=",".join(PHASES),
                    help=f"comma-separated phases to run (default: all of {','.join(PHASES)})")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip")
    ap.add_argument("--previous", default="", metavar="REV",
                    help="also run each phase on the gateway code of this commit (the previous figure)")
    ap.add_argument("--callgrind", type=float, default=0.0, metavar="DILATION",
                    help="also count serial_rates (and ble_foreign) instructions under callgrind, "
                         "time dilated this much (ble_foreign: 10)")
    args = ap.parse_args()
    unknown = {s for s in (args.phases + "," + args.skip).split(",") if s} - set(PHASES)
    if unknown:
        ap.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    quick = args.quick
    n = args.frames or (10_000 if quick else 100_000)
    per_day = args.frames_per_node_day
    per_hour = round(args.nodes * per_day / 24)
    memory_hours = 2 if quick else 24
    busy_outage = 0 if quick else 60 * args.nodes  # 1 frame/node/minute for an hour
    latency_rate, latency_dur = (100.0, 5.0) if quick else (200.0, 20.0)
    quiet_rate, quiet_dur = (0.0, 0.0) if quick else (1.0, 30.0)
    skip = {s for s in args.skip.split(",") if s} | (set(PHASES) - set(args.phases.split(",")))
    # Frames only for the phases that run (the first frames of a seed are the same whatever
    # the total, so a throughput-only run measures the same frames as a full one).
    need = max(n, 1,
               0 if "memory" in skip else per_hour * (memory_hours + 1) + 2 * busy_outage,
               0 if "latency" in skip else int(latency_rate * latency_dur),
               0 if "serial_rates" in skip else 10000)

    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as td:
        tmp = Path(td)
        log(f"workload: {args.nodes} nodes, {need} frames (seed {args.seed}) ...")
        work = make_workload(args.nodes, need, args.seed)
        wl_path = tmp / "workload.pickle"
        wl_path.write_bytes(pickle.dumps(work))
        broker = start_broker(tmp / "mosquitto")
        bpid = broker_pid(broker)
        log(f"mosquitto on {broker.host}:{broker.port} (pid {bpid}, cpus {sorted(os.sched_getaffinity(bpid)) if bpid else '?'})")
        ctx: dict[str, Any] = {
            "workload": str(wl_path), "host": broker.host, "port": broker.port, "frames": n,
            "per_node_day": per_day, "profile": args.profile,
            "latency_rate": latency_rate, "latency_duration_s": latency_dur,
            "latency_quiet_rate": quiet_rate, "latency_quiet_duration_s": quiet_dur,
            "memory_hours": memory_hours, "busy_outage_frames": busy_outage,
            "cpu_window_s": 4.5 if quick else 45.0, "cpu_spacing_s": 1.5,
            "serial_rates": [[0, 2000], [500, 1500], [100, 500]] if quick else [[0, 10000], [500, 5000], [100, 1500]],
            "ble_window_s": 5.0 if quick else 20.0, "ble_repeats": 6, "ble_foreign_per_s": 200.0,
            "ble_node_frames_per_s": 1000 * per_day / 86400,
        }
        code_roots = {"": ""}
        if args.previous:
            code_roots["previous"] = str(previous_tree(args.previous, tmp / f"tree-{args.previous}",
                                                         GATEWAY_PACKAGES))
        results: dict[str, Any] = {}
        try:
            for phase, timeout in PHASES.items():
                if phase in skip:
                    continue
                if phase == "cpu_share" and "throughput" in results:
                    ctx["full_batch_cpu_us_per_frame"] = results["throughput"].get("cpu_us_per_frame")
                for tag, code_root in code_roots.items():  # previous and current side by side
                    key = phase + (f"_{tag}" if tag else "")
                    results[key] = run_child(phase, {**ctx, "code_root": code_root}, tmp, timeout, tag)
                    if phase in ("serial_rates", "ble_foreign") and args.callgrind:
                        cg_ctx = {**ctx, "code_root": code_root, "dilation": args.callgrind,
                                  "idle_window_s": 10.0, "serial_rates": CALLGRIND_RATES}
                        if phase == "ble_foreign":  # ~200 adverts/s: less dilation, a shorter street
                            cg_ctx.update(dilation=BLE_CALLGRIND_DILATION, ble_window_s=6.0,
                                          ble_foreign_window_s=3.0)
                        results[key + "_callgrind"] = run_child(phase, cg_ctx, tmp, 4 * timeout,
                                                                (tag + "-" if tag else "") + "callgrind", True)
        finally:
            broker.stop()
        air = on_air(Workload(work.keys, work.kinds, work.frames[:n]))

    ours, base = results.get("throughput", {}), results.get("baseline", {})
    thr: dict[str, Any] = {}
    if ours and "error" not in ours:
        thr = {"ours": ours, "floor_frames_per_s": FLOOR_FRAMES_PER_S,
               "meets_floor": ours["frames_per_s"] >= FLOOR_FRAMES_PER_S}
        if base and "error" not in base:
            thr["baseline_json"] = base
            thr["ratio_frames_per_s_ours_over_baseline"] = round(ours["frames_per_s"] / base["frames_per_s"], 2)
            thr["ratio_cpu_per_frame_baseline_over_ours"] = round(base["cpu_us_per_frame"] / ours["cpu_us_per_frame"], 2)
    elif base:
        thr = {"baseline_json": base}
    bpr: dict[str, Any] = {"on_air": air}
    if ours and "error" not in ours:
        bpr["broker"] = {
            "ours_payload_bytes_per_reading": ours["broker_payload_bytes_per_reading"],
            "ours_wire_bytes_per_reading": ours["broker_wire_bytes_per_reading"],
            "ours_frames_per_message": ours["frames_per_batch_mean"],
            "note": "wire = payload + PUBLISH header, topic, packet id (+ MQTT 5 content-type property); PUBACKs not counted",
        }
        if base and "error" not in base:
            bpr["broker"].update({
                "baseline_payload_bytes_per_reading": base["broker_payload_bytes_per_reading"],
                "baseline_wire_bytes_per_reading": base["broker_wire_bytes_per_reading"],
                "ratio_wire_baseline_over_ours": round(base["broker_wire_bytes_per_reading"]
                                                       / ours["broker_wire_bytes_per_reading"], 2),
            })
        bpr["disk"] = {
            "write_syscall_bytes_per_reading": ours["disk_write_syscall_bytes_per_reading"],
            "block_layer_write_bytes_per_reading": ours["disk_block_write_bytes_per_reading"],
            "payload_bytes_per_reading": ours["broker_payload_bytes_per_reading"],
            "ratio_written_over_payload": round(ours["disk_write_syscall_bytes_per_reading"]
                                                / ours["broker_payload_bytes_per_reading"], 2),
            "note": ("outbox = SQLite WAL, synchronous=full, full batches of the throughput run; "
                     "write_syscall = the gateway's disk_bytes_written metric (/proc/self/io wchar "
                     "around each transaction); block_layer = /proc/self/io write_bytes"),
        }
        cs = results.get("cpu_share", {})
        if cs and "error" not in cs:
            bpr["disk"]["write_syscall_bytes_per_reading_unbatched"] = cs["disk_bytes_per_frame_unbatched"]
    out = {
        "bench": "gateway",
        "summary": _summary(thr, bpr, results),
        "command": " ".join([".venv/bin/python -m bench.bench_gateway", *sys.argv[1:]]),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if quick else "full",
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
                    "platform": platform.platform(), "mosquitto": mosquitto_version()},
        "pinning": {"pinned": True, "gateway_and_baseline_cpu": GATEWAY_CPU,
                    "broker_and_subscriber_cpus": sorted(side_cpus()),
                    "how": "os.sched_setaffinity in each phase's child process; mosquitto pinned by pid"},
        "workload": {"nodes": args.nodes, "throughput_frames": n, "seed": args.seed,
                     "kinds": dict(Counter(work.kinds.values())),
                     "generator": "bench/frames.py (real firmware codec, us_proto)"},
        "throughput": thr,
        "bytes_per_reading": bpr,
        "latency": results.get("latency"),
        "memory": results.get("memory"),
        "cpu_share": results.get("cpu_share"),
        "variants": {k: v for k, v in results.items() if k not in PHASES},
        "serial_rates": results.get("serial_rates"),
        "ble_foreign": results.get("ble_foreign"),
        "previous": args.previous or None,
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "total_wall_s": round(time.monotonic() - t_start, 1),
    }
    print(json.dumps(out, indent=1))
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed else 0


def _summary(thr: dict[str, Any], bpr: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """Headline figures, flat, for RESULTS.md (details in the sections below)."""

    def get(d: Any, *path: str) -> Any:
        for k in path:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    mem, cs, lat = results.get("memory"), results.get("cpu_share"), results.get("latency")
    return {
        "frames_per_s": get(thr, "ours", "frames_per_s"),
        "cpu_us_per_frame": get(thr, "ours", "cpu_us_per_frame"),
        "baseline_json_frames_per_s": get(thr, "baseline_json", "frames_per_s"),
        "baseline_json_cpu_us_per_frame": get(thr, "baseline_json", "cpu_us_per_frame"),
        "ratio_frames_per_s_ours_over_baseline": get(thr, "ratio_frames_per_s_ours_over_baseline"),
        "ratio_cpu_per_frame_baseline_over_ours": get(thr, "ratio_cpu_per_frame_baseline_over_ours"),
        "meets_floor_20000_frames_per_s": get(thr, "meets_floor"),
        "on_air_frame_bytes_max": get(bpr, "on_air", "frame_bytes_max"),
        "on_air_advert_bytes_max": get(bpr, "on_air", "advert_bytes_max"),
        "on_air_advert_limit_bytes": BLE_ADV_LIMIT_BYTES,
        "broker_wire_bytes_per_reading": get(bpr, "broker", "ours_wire_bytes_per_reading"),
        "baseline_json_broker_wire_bytes_per_reading": get(bpr, "broker", "baseline_wire_bytes_per_reading"),
        "disk_bytes_per_reading_full_batches": get(bpr, "disk", "write_syscall_bytes_per_reading"),
        "disk_bytes_per_reading_unbatched": get(cs, "disk_bytes_per_frame_unbatched"),
        "payload_bytes_per_reading": get(bpr, "disk", "payload_bytes_per_reading"),
        "latency_rate_frames_per_s": get(lat, "busy", "rate_frames_per_s"),
        "latency_ms_p50": get(lat, "busy", "latency_ms_p50"),
        "latency_ms_p99": get(lat, "busy", "latency_ms_p99"),
        "latency_quiet_ms_p50": get(lat, "quiet", "latency_ms_p50"),
        "latency_quiet_ms_p99": get(lat, "quiet", "latency_ms_p99"),
        "rss_mib_gateway_idle": get(mem, "rss_mib_gateway_idle"),
        "rss_mib_after_sustained": get(mem, "rss_mib_after_sustained"),
        "rss_mib_after_1h_outage_drained": get(mem, "outage_1h", "rss_mib_after_drain"),
        "outbox_peak_bytes_1h_outage": get(mem, "outage_1h", "outbox_peak_bytes"),
        "rss_mib_after_busy_outage_drained": get(mem, "outage_busy", "rss_mib_after_drain"),
        "rss_mib_after_busy_outage_repeat_drained": get(mem, "outage_busy_repeat", "rss_mib_after_drain"),
        "outbox_peak_bytes_busy_outage": get(mem, "outage_busy", "outbox_peak_bytes"),
        "pi4_cpu_share_pct_per_100_nodes": get(cs, "pi4_cpu_share_pct_per_100_nodes_marginal"),
        "pi4_idle_cpu_share_pct": get(cs, "pi4_idle_cpu_share_pct"),
        "pi4_slowdown_assumed": PI4_SLOWDOWN,
        "sd_bytes_written_per_hour_per_100_nodes": get(cs, "sd_bytes_written_per_hour_per_100_nodes"),
    }


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--_phase":
        sys.exit(child_main(sys.argv[2], sys.argv[3]))
    if len(sys.argv) >= 2 and sys.argv[1] == "--_serial_writer":
        from bench.bench_cost import writer_main

        sys.exit(writer_main(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
    if len(sys.argv) >= 2 and sys.argv[1] == "--_ble_sender":
        from bench.bench_ble import sender_main

        sys.exit(sender_main(sys.argv[2], sys.argv[3]))
    if len(sys.argv) >= 2 and sys.argv[1] == "--_subscriber":
        h, p, e, o, t = sys.argv[2:7]
        sys.exit(subscriber_main(h, int(p), int(e), o, float(t)))
    sys.exit(main())
