"""``urbansense sim run``: run a scenario, print a summary, write ground truth and plots."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from urbansense.durations import duration_arg


def add_parser(subparsers: Any) -> None:
    sim = subparsers.add_parser("sim", help="run the simulator (virtual district, real firmware)")
    sub = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND")
    run = sub.add_parser("run", help="run a scenario")
    run.add_argument("--scenario", required=True, help="scenario TOML (scenarios/<name>.toml)")
    run.add_argument("--duration", type=duration_arg, default=None,
                     help="simulated time (e.g. 1d, 6h; default: the scenario's)")
    run.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's)")
    run.add_argument("--nodes", type=int, default=None, help="scale the scenario's groups to ~N nodes")
    run.add_argument("--realtime", action="store_true", help="pace the run against the wall clock")
    run.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second")
    run.add_argument("--serial", choices=("loopback", "pty"), default="loopback",
                     help="serial nodes: built-in acker, or pty pairs for a real gateway")
    run.add_argument("--processes", type=int, default=1,
                     help="shard nodes over processes (no truth file, no gateway in the loop)")
    run.add_argument("--python", default="auto",
                     help="with --processes: the shards' interpreter: auto (the PyPy environment "
                          "`make setup` builds, about twice as fast, the same result bit for bit; "
                          "this CPython without it), self (fork this CPython), or a path")
    run.add_argument("--truth", default=None, help="write every frame sent as JSON lines here")
    run.add_argument("--plots", default=None, help="write PNG plots into this directory")
    run.add_argument("--json", action="store_true", help="print only the summary JSON on stdout")
    run.set_defaults(handler=_run)
    sim.set_defaults(handler=lambda args: (sim.print_help(), 2)[1])


def _run(args: argparse.Namespace) -> int:
    try:
        return _run_checked(args)
    except (ValueError, KeyError, OSError, ImportError) as exc:
        print(f"sim: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _run_checked(args: argparse.Namespace) -> int:
    from simulator.sim import Simulation, run_parallel, sim_python

    t0 = time.monotonic()
    if args.processes > 1:
        if args.truth or args.realtime or args.plots or args.serial == "pty":
            print("sim: --processes > 1 runs without --truth, --plots, --realtime and pty serial",
                  file=sys.stderr)
            return 2
        python = sim_python() if args.python == "auto" else None if args.python == "self" else args.python
        summary = run_parallel(args.scenario, seed=args.seed, nodes=args.nodes,
                               duration_s=args.duration, processes=args.processes, python=python)
        if not args.json:
            print(f"shards: {args.processes} processes on {python or sys.executable}", file=sys.stderr)
    else:
        sim = Simulation(args.scenario, seed=args.seed, nodes=args.nodes, serial=args.serial)
        if args.serial == "pty" and not args.json:
            for name, path in sim.serial_ports().items():
                print(f"serial node {name}: {path}", file=sys.stderr)
        if args.truth:
            sim.open_truth(args.truth)
        try:
            if args.realtime:
                summary = sim.run_realtime(args.duration, speed=args.speed)
            else:
                summary = sim.run(args.duration)
            if args.plots:
                from simulator.plots import write_plots

                written = write_plots(sim, args.plots)
                if not args.json:
                    print("plots: " + ", ".join(written), file=sys.stderr)
        finally:
            if sim.truth_out is not None:
                sim.truth_out.close()
            sim.close()
    wall_s = time.monotonic() - t0
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(_human(summary))
        cycles = summary["wake_cycles"]
        print(f"wall time {wall_s:.1f} s, {cycles / wall_s:.0f} node-wake-cycles/s", file=sys.stderr)
    return 0


def _human(s: dict[str, Any]) -> str:
    lines = [f"scenario {s['scenario']} seed {s['seed']}: {s['duration_s'] / 3600:.1f} h simulated, "
             f"{sum(s['nodes'].values())} nodes, {s['wake_cycles']} wake cycles"]
    for kind, n in s["nodes"].items():
        f = s["frames"][kind]
        e = s["energy"][kind]
        life = s["battery_life_years"][kind]
        lines.append(
            f"  {kind:8s} {n:5d} nodes  frames sent {f['sent']:6d} lost on air {f['lost_on_air']:5d}"
            f"  avg {e['avg_current_ua']['mean']:.1f} uA  battery {life['p50']:.1f} y (p50), "
            f"{life['min']:.1f} y (min)"
        )
    if s["firmware_errors"]:
        lines.append(f"  firmware errors: {s['firmware_errors']}")
    return "\n".join(lines)
