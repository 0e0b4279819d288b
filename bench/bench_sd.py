"""Bytes the gateway writes to its SD card per reading: full batches and 1 frame/s, serial and BLE.

Run: .venv/bin/python -m bench.bench_sd [--previous REV] [--dir D] [--per-file] [--callgrind]
(prints one JSON object).

The real verify -> batch -> outbox path (the gateway's page size, synchronous=full, default batch
settings) under a simulated clock in ticks of 10 ms, as the batch stage wakes at its
deadlines; every committed batch is acked at the next tick (a broker that answers at once)
and ``flush_acks`` runs every simulated second, as the gateway's chores do. 1,000 nodes
(bench/frames.py). ``warmup`` frames first, so the WAL, the database and the staging
journal have reached their steady sizes (a growing file costs the file system's journal a
commit per fsync, which a gateway pays only in its first minutes); then ``frames`` frames,
measured. Each scenario runs in a process of its own, also for the previous commit's code.

Figures per reading, over the measured frames:
- ``payload``: the SenML pack bytes (what the broker gets);
- ``write_syscall``: bytes handed to write(2) (``/proc/self/io`` wchar): WAL frames, their
  checkpoint into the database, the staging journal;
- ``page_cache``: ``write_bytes`` of ``/proc/self/io``: each 4 KiB page of the page cache
  dirtied, so a 100-byte append after an fsync counts 4,096;
- ``device`` (``--dir`` on a file system of its own, e.g. an ext4 loop mount): sectors the
  block device under ``--dir`` wrote (``/sys/dev/block/M:m/stat``), with a sync before and
  after: the data and the file system's journal and metadata, what the card receives;
- ``--per-file``: the same run under ``strace -y``: write(2) bytes and fsyncs per file.
``--callgrind``: instructions per reading (the measured frames' run less the warm-up's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Full batches: 2,000 frames/s, so each batch closes at batch.max_records (100 frames).
FULL_RATE = 2000.0
SCENARIOS = {"serial_full": ("serial", FULL_RATE), "serial_1fps": ("serial", 1.0),
             "ble_full": ("ble", FULL_RATE), "ble_1fps": ("ble", 1.0)}
TICK_S = 0.01
# Frames before the measured ones: the WAL reaches its 1,000 pages (wal_autocheckpoint) and
# is written from its start again after ~100 full batches, or ~500 lone-frame commits.
WARMUP_FULL = 15000
WARMUP_SLOW = 1500
# Measured frames: 300 full batches (about three checkpoints), or 3,000 lone-frame commits.
FRAMES_FULL = 30000
FRAMES_SLOW = 3000


def _io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def _device_sectors(path: Path) -> int | None:
    st = os.stat(path)
    stat = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat")
    try:
        return int(stat.read_text().split()[6])
    except (OSError, IndexError, ValueError):
        return None


def run_scenario(transport: str, rate_hz: float, warmup: int, frames: int, data_dir: Path,
                 settings: dict[str, str] | None = None) -> dict[str, Any]:
    """One scenario in this process, in an empty ``data_dir``. ``settings``: ``batch.<field>``
    or ``outbox.synchronous`` values other than the defaults."""
    from unittest import mock

    import gateway.batcher
    import gateway.outbox._outbox
    from bench.frames import make_workload
    from gateway.batcher import Batcher
    from gateway.config import BatchConfig, HealthConfig
    from gateway.flow import Heard
    from gateway.health import Health
    from gateway.metrics import Metrics
    from gateway.outbox import SD_PAGE_SIZE, Outbox
    from gateway.registry import Node, Registry
    from gateway.replay import ReplayTable
    from gateway.verify import Verifier
    from urbansense.wire.protocol import NodeKeys

    work = make_workload(1000, warmup + frames, 1)
    registry = Registry(Node(n, work.kinds[n], NodeKeys(k)) for n, k in work.keys.items())
    clock = [1000.0]
    with contextlib.ExitStack() as stack:
        for mod in (gateway.batcher, gateway.outbox._outbox):
            stack.enter_context(mock.patch.object(mod.time, "monotonic", lambda: clock[0]))
        metrics = Metrics()
        cfg, synchronous = BatchConfig(), "full"
        for key, value in (settings or {}).items():
            if key == "outbox.synchronous":
                synchronous = value
            else:
                field = key.removeprefix("batch.")
                setattr(cfg, field, type(getattr(cfg, field))(value))
        outbox = Outbox(data_dir / "outbox.db", 1 << 28, metrics, synchronous, page_size=SD_PAGE_SIZE)
        replay = ReplayTable(outbox.load_nodes())
        verifier = Verifier(registry, replay, metrics)
        health = Health(HealthConfig(), registry, lambda *a: None, 0.0)
        batcher = Batcher(cfg, outbox, registry, replay, health, metrics)
        committed: list[int] = []
        outbox.add_listener(lambda: committed.append(1))
        next_tick, next_flush = clock[0] + TICK_S, clock[0] + 1.0

        def ack_all() -> None:
            if committed:
                committed.clear()
                for b in outbox.pending_ids():
                    outbox.ack(b)

        def feed(i: int) -> None:
            nonlocal next_tick, next_flush
            rssi, reply = (None, lambda b: None) if transport == "serial" else (-70, None)
            v = verifier.process(Heard(work.frames[i], transport, rssi, reply))
            assert v is not None
            batcher.add(v)
            ack_all()  # a batch max_records closed
            clock[0] += 1 / rate_hz
            while next_tick <= clock[0]:
                batcher.tick()
                ack_all()
                if next_tick >= next_flush:
                    outbox.flush_acks()
                    next_flush += 1.0
                next_tick += TICK_S

        for i in range(warmup):
            feed(i)
        os.sync()
        io0, dev0, pay0 = _io(), _device_sectors(data_dir), metrics.batch_bytes.sum
        b0, s0 = metrics.batches.total(), metrics.staging_commits.total()
        for i in range(warmup, warmup + frames):
            feed(i)
        os.sync()
        io1, dev1 = _io(), _device_sectors(data_dir)
        outbox.close()
    n = frames
    if not n:  # the warm-up alone (--callgrind subtracts it)
        return {}
    out: dict[str, Any] = {
        "transport": transport, "rate_frames_per_s": rate_hz, "frames": n,
        "batch_commits": int(metrics.batches.total() - b0),
        "staging_appends": int(metrics.staging_commits.total() - s0),
        "payload": round((metrics.batch_bytes.sum - pay0) / n, 1),
        "write_syscall": round((io1["wchar"] - io0["wchar"]) / n, 1),
        "page_cache": round((io1["write_bytes"] - io0["write_bytes"]) / n, 1),
    }
    if dev0 is not None and dev1 is not None:
        out["device"] = round((dev1 - dev0) * 512 / n, 1)
    out["write_syscall_over_payload"] = round(out["write_syscall"] / out["payload"], 2)
    out["page_cache_over_payload"] = round(out["page_cache"] / out["payload"], 2)
    return out


def _per_file(log: Path, data_dir: Path) -> dict[str, Any]:
    written: Counter[str] = Counter()
    syncs: Counter[str] = Counter()
    pat = re.compile(r"(?:\d+ +)?(pwrite64|write|fdatasync|fsync|ftruncate)\(\d+<([^>]*)>.*= (-?\d+)")
    for line in log.read_text().splitlines():
        m = pat.match(line)
        if not m or not m.group(2).startswith(str(data_dir)):
            continue
        name = Path(m.group(2)).name
        if m.group(1) in ("write", "pwrite64"):
            written[name] += int(m.group(3))
        elif m.group(1) != "ftruncate":
            syncs[name] += 1
    return {"write_syscall_bytes": dict(written), "fsyncs": dict(syncs),
            "note": "warm-up and measured frames together, open and close included"}


def _child(code_root: Path, scenario: str, args: argparse.Namespace, data_dir: Path,
           wrap: list[str], warmup_only: bool = False) -> subprocess.CompletedProcess[str]:
    rate = SCENARIOS[scenario][1]
    warmup = args.warmup if args.warmup is not None else (WARMUP_FULL if rate == FULL_RATE else WARMUP_SLOW)
    frames = args.frames if args.frames is not None else (FRAMES_FULL if rate == FULL_RATE else FRAMES_SLOW)
    cmd = [*wrap, sys.executable, "-m", "bench.bench_sd", "--_child", scenario, "--_dir", str(data_dir),
           "--warmup", str(warmup), "--frames", "0" if warmup_only else str(frames),
           *(f"--set={s}" for s in args.set)]
    env = {**os.environ, "PYTHONPATH": f"{code_root}{os.pathsep}{ROOT}"}
    # Not ROOT as the working directory: ``-m`` puts it first on sys.path, before code_root.
    return subprocess.run(cmd, cwd=data_dir, env=env, capture_output=True, text=True, check=True)


def measure(code_root: Path, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in args.scenarios.split(","):
        d = base / name
        d.mkdir(parents=True)
        res = json.loads(_child(code_root, name, args, d, []).stdout.splitlines()[-1])
        if args.per_file:
            log = base / f"{name}.strace"
            shutil_rm(d)
            _child(code_root, name, args, d, ["strace", "-f", "-y", "-o", str(log),
                                              "-e", "trace=write,pwrite64,fsync,fdatasync,ftruncate"])
            res["per_file"] = _per_file(log, d)
        if args.callgrind:
            counts = []
            for warm_only in (True, False):
                shutil_rm(d)
                cg = _child(code_root, name, args, d, ["valgrind", "--tool=callgrind",
                                                       "--callgrind-out-file=/dev/null"], warm_only)
                counts.append(int(re.findall(r"refs:\s+([\d,]+)", cg.stderr)[-1].replace(",", "")))
            res["instructions_per_reading"] = round((counts[1] - counts[0]) / res["frames"])
        shutil_rm(d)
        out[name] = res
    return out


def shutil_rm(d: Path) -> None:
    for p in d.iterdir():
        p.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=None,
                    help=f"frames before the measured ones (default {WARMUP_FULL} full, {WARMUP_SLOW} at 1 frame/s)")
    ap.add_argument("--frames", type=int, default=None,
                    help=f"measured frames (default {FRAMES_FULL} full, {FRAMES_SLOW} at 1 frame/s)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of " + ", ".join(SCENARIOS))
    ap.add_argument("--previous", default="", metavar="REV", help="also measure the outbox code of this commit")
    ap.add_argument("--dir", default="", help="where the outbox goes (a file system of its own for `device`)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="batch.<field> or outbox.synchronous other than the default (repeatable)")
    ap.add_argument("--per-file", action="store_true", help="write(2) bytes and fsyncs per file (strace)")
    ap.add_argument("--callgrind", action="store_true", help="instructions per reading (valgrind)")
    ap.add_argument("--_child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--_dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        transport, rate = SCENARIOS[args._child]
        settings = dict(kv.split("=", 1) for kv in args.set)
        print(json.dumps(run_scenario(transport, rate, args.warmup or 0, args.frames, Path(args._dir), settings)))
        return 0
    from bench.trees import GATEWAY_PACKAGES, previous_tree

    with tempfile.TemporaryDirectory(dir=args.dir or None) as tmp:
        roots = {"now": ROOT}
        if args.previous:
            roots[f"previous ({args.previous})"] = previous_tree(args.previous, Path(tmp) / f"tree-{args.previous}",
                                                                 GATEWAY_PACKAGES)
        result = {"command": " ".join(sys.argv), "settings": args.set,
                  "load_average": os.getloadavg()}
        for tag, root in roots.items():
            result[tag] = measure(root, args, Path(tmp) / tag.split()[0])
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
