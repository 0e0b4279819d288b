"""``urbansense sim run``: run a scenario, print a summary, write ground truth and plots."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
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
    run.add_argument("--gateway-socket", action="append", default=[], metavar="GW=PATH",
                     help="hand gateway GW's adverts to the BLE datagram socket PATH of an "
                          "`urbansense gateway run` (ble.backend = \"datagram\"); repeatable")
    run.add_argument("--wait-gateways", type=duration_arg, default=30.0,
                     help="before the run, wait this long for each gateway socket to be bound")
    run.add_argument("--pty-dir", default=None,
                     help="with --serial pty: a symlink DIR/<node name> to each node's pty")
    run.add_argument("--truth", default=None, help="write every frame sent as JSON lines here")
    run.add_argument("--plots", default=None, help="write PNG plots into this directory")
    run.add_argument("--json", action="store_true", help="print only the summary JSON on stdout")
    run.set_defaults(handler=_run)
    reg = sub.add_parser("registry", help="write the scenario's node registry for a gateway")
    reg.add_argument("--scenario", required=True, help="scenario TOML")
    reg.add_argument("--seed", type=int, default=None, help="random seed (the keys follow it)")
    reg.add_argument("--nodes", type=int, default=None, help="as for sim run")
    reg.add_argument("--out", required=True, help="registry file to write (JSON lines, mode 0600)")
    reg.set_defaults(handler=_registry)
    sim.set_defaults(handler=lambda args: (sim.print_help(), 2)[1])


def _run(args: argparse.Namespace) -> int:
    try:
        return _run_checked(args)
    except (ValueError, KeyError, OSError, ImportError) as exc:
        print(f"sim: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _registry(args: argparse.Namespace) -> int:
    """Every node of the scenario with its key, as `gateway.registry` reads it; the serial
    nodes and the gateway each is wired to on stderr (their pty names under --pty-dir)."""
    from gateway.registry import NodeSpec, write_registry
    from simulator.sim import Simulation

    try:
        sim = Simulation(args.scenario, seed=args.seed, nodes=args.nodes)
    except (ValueError, KeyError, OSError) as exc:
        print(f"sim: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    try:
        nodes = sim.registry()
        write_registry(Path(args.out), [NodeSpec(n.node_id, n.kind, bytes.fromhex(n.key_hex)) for n in nodes])
    finally:
        sim.close()
    print(f"registry: {len(nodes)} nodes -> {args.out}", file=sys.stderr)
    for n in nodes:
        if n.transport == "serial":
            print(f"serial node {n.name} gateway {n.gateway}", file=sys.stderr)
    return 0


def _plug_gateways(sim: Any, specs: list[str]) -> None:
    """--gateway-socket GW=PATH onto the scenario's gateways (ValueError names a bad one)."""
    by_id = {g.gw_id: g for g in sim.gateways}
    for spec in specs:
        gw_id, sep, path = spec.partition("=")
        if not sep or not path or gw_id not in by_id:
            raise ValueError(f"--gateway-socket {spec!r}: want GW=PATH with GW one of {sorted(by_id)}")
        by_id[gw_id].sim_socket = path


def _wait_for_sockets(sim: Any, timeout_s: float) -> None:
    """Adverts sent before a gateway binds its socket are lost: wait for every one."""
    for g in sim.gateways:
        if g.sim_socket is None:
            continue
        print(f"waiting for gateway {g.gw_id}'s BLE socket {g.sim_socket}", file=sys.stderr)
        deadline = time.monotonic() + timeout_s
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                try:
                    s.connect(g.sim_socket)
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise OSError(f"gateway {g.gw_id}: nothing bound to {g.sim_socket} after {timeout_s:.0f} s "
                              "(start `urbansense gateway run` with ble.datagram_socket set to it)")
            time.sleep(0.05)


def _link_ptys(ports: dict[str, str], pty_dir: str) -> None:
    d = Path(pty_dir)
    d.mkdir(parents=True, exist_ok=True)
    for name, path in ports.items():
        link = d / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path)


def _run_checked(args: argparse.Namespace) -> int:
    from simulator.parallel import run_parallel, sim_python
    from simulator.sim import Simulation

    t0 = time.monotonic()
    if args.processes > 1:
        if args.truth or args.realtime or args.plots or args.serial == "pty" or args.gateway_socket:
            print("sim: --processes > 1 runs without --truth, --plots, --realtime, pty serial "
                  "and gateways in the loop",
                  file=sys.stderr)
            return 2
        python = sim_python() if args.python == "auto" else None if args.python == "self" else args.python
        summary = run_parallel(args.scenario, seed=args.seed, nodes=args.nodes,
                               duration_s=args.duration, processes=args.processes, python=python)
        if not args.json:
            print(f"shards: {args.processes} processes on {python or sys.executable}", file=sys.stderr)
    else:
        sim = Simulation(args.scenario, seed=args.seed, nodes=args.nodes, serial=args.serial)
        try:
            _plug_gateways(sim, args.gateway_socket)
            if args.serial == "pty":
                ports = sim.serial_ports()
                if args.pty_dir:
                    _link_ptys(ports, args.pty_dir)
                for name, path in ports.items():  # before the wait: a gateway's config needs them
                    where = f"{args.pty_dir}/{name} -> {path}" if args.pty_dir else path
                    print(f"serial node {name}: {where}", file=sys.stderr, flush=True)
            _wait_for_sockets(sim, args.wait_gateways)
        except BaseException:
            sim.close()
            raise
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
