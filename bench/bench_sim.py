"""Simulator benchmark: N nodes x 1 simulated day, sharded over processes, no gateway.

    python bench/bench_sim.py [--nodes 10000] [--processes 2] [--duration 1d] [--python auto|self|PATH]

The shards run on PyPy when make setup built .venv-pypy (about twice as fast as CPython,
the same result bit for bit: tests/test_sim_pypy.py); a shorter forked-CPython run is timed
beside it for comparison.

Prints one JSON object: wall time, node-wake-cycles, cycles per second, and the run's
energy/battery figures per node kind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.parallel import run_parallel, sim_python  # noqa: E402
from simulator.sim import Simulation  # noqa: E402
from urbansense.durations import parse_duration_s  # noqa: E402


def energy_per_board(duration_s: float) -> dict[str, object]:
    """Average current and battery life per node kind on each board, same world and rates:
    parking 10 arrivals + 10 departures a day and an hourly heartbeat, bins measured every
    15 min, water hourly reports and ~150 l a day (the firmware issue's realistic rates)."""
    out: dict[str, object] = {}
    for path in sorted((ROOT / "boards").glob("*.json")):
        sc = {
            "sim": {"name": f"energy-{path.stem}", "seed": 1, "board": path.stem},
            "gateways": [{"id": "gw", "x": 50.0, "y": 50.0}],
            "nodes": [{"kind": k, "count": 30, "area": [0, 0, 100, 100]} for k in ("parking", "bin", "water")],
        }
        s = Simulation(sc).run(duration_s)
        out[path.stem] = {
            k: {"avg_current_ua": s["energy"][k]["avg_current_ua"]["mean"],
                "wake_cycles_per_day": s["energy"][k]["wake_cycles_per_day"],
                "mc_per_day_by_state": s["energy"][k]["mc_per_day_by_state"],
                "battery_life_years": s["battery_life_years"][k]}
            for k in s["nodes"]
        }
    return out


def _interpreter(python: str) -> str:
    """e.g. "PyPy 3.9.16" or "CPython 3.11.7": what ran the shards."""
    out = subprocess.run([python, "-c", "import platform; print(platform.python_implementation(), "
                          "platform.python_version())"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "city-10k.toml"))
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--duration", default="1d")
    ap.add_argument("--no-boards", action="store_true",
                    help="skip the per-board energy runs (smoke scenario x every boards/*.json)")
    ap.add_argument("--python", default="auto",
                    help="shard interpreter: auto (PyPy from make setup when present), self (fork this "
                         "CPython), or a path")
    ap.add_argument("--cpython-duration", default="6h",
                    help="also time forked CPython shards over this much of the day when the shards run "
                         "elsewhere (0 skips)")
    args = ap.parse_args()
    duration_s = parse_duration_s(args.duration)
    python = sim_python() if args.python == "auto" else None if args.python == "self" else args.python
    t0 = time.monotonic()
    summary = run_parallel(args.scenario, nodes=args.nodes, duration_s=duration_s,
                           processes=args.processes, python=python)
    wall_s = time.monotonic() - t0
    cpython: dict[str, object] = {}
    cpy_s = parse_duration_s(args.cpython_duration)
    if python is not None and cpy_s > 0:
        t1 = time.monotonic()
        part = run_parallel(args.scenario, nodes=args.nodes, duration_s=cpy_s, processes=args.processes)
        cpy_wall = time.monotonic() - t1
        cpython = {"interpreter": _interpreter(sys.executable), "simulated_s": cpy_s, "wall_s": round(cpy_wall, 2),
                   "wake_cycles": part["wake_cycles"],
                   "wake_cycles_per_s": round(part["wake_cycles"] / cpy_wall, 1)}
    cycles = summary["wake_cycles"]
    per_board = {} if args.no_boards else energy_per_board(duration_s)
    print(json.dumps({
        "bench": "simulator",
        "command": "python bench/bench_sim.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "nodes": sum(summary["nodes"].values()),
        "nodes_by_kind": summary["nodes"],
        "simulated_s": duration_s,
        "processes": args.processes,
        "interpreter": _interpreter(python or sys.executable),
        "cpython_comparison": cpython,
        "wall_s": round(wall_s, 2),
        "wake_cycles": cycles,
        "wake_cycles_per_s": round(cycles / wall_s, 1),
        "target_wall_s": 60.0,
        "frames_sent": summary["frames"]["total"]["sent"],
        "lost_on_air": summary["frames"]["total"]["lost_on_air"],
        "avg_current_ua": {k: v["avg_current_ua"]["mean"] for k, v in summary["energy"].items()},
        "wake_cycles_per_day": {k: v["wake_cycles_per_day"] for k, v in summary["energy"].items()},
        "battery_life_years_p50": {k: v["p50"] for k, v in summary["battery_life_years"].items()},
        "firmware_errors": summary["firmware_errors"],
        "energy_per_board": per_board,
        "assumptions": summary["assumptions"],
        "cell": summary["cell"],
    }, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
