"""``urbansense demo``: the whole data path on one machine, checked against ground truth.

A private mosquitto, the Angers-centre-like district from the simulator paced in accelerated
real time, the real gateway (one per simulated gateway) hearing BLE through the simulator's
bleak backend and serial nodes over pty pairs, and an independent subscriber decoding what
reaches the broker. At the end, every frame the simulator sent is accounted for.
"""

# The docstring is the command's --help. This module is the run and its I/O (command line,
# processes, subscriber, progress, printed summary); the accounting it ends with and the
# verdict are urbansense/demo.py's, pure, so they are tested (and mutation-tested) alone.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from urbansense.demo import Received, compare, verdict_ok
from urbansense.durations import duration_arg
from urbansense.wire.node_config import KINDS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = ROOT / "scenarios" / "angers-centre.toml"
DRAIN_TIMEOUT_S = 30.0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the simulated district through the real gateway to a private broker",
        description=__doc__,
    )
    p.add_argument("--duration", type=duration_arg, default=60.0,
                   help="wall time of the simulated run (default 60s)")
    p.add_argument("--speed", type=float, default=60.0,
                   help="simulated seconds per wall second (default 60)")
    p.add_argument("--nodes", type=int, default=None, help="scale the scenario to about N nodes")
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("out/demo"),
                   help="where the truth file, gateway log, plots and summary go")
    p.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object on stdout (progress goes to stderr)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--city", action="store_true",
                   help="the city tier: 3-node NATS cluster, collectors, a database (docs/CITY.md)")
    p.add_argument("--store", choices=("postgres", "sqlite"), default="postgres",
                   help="with --city: the collectors' database (default postgres)")
    p.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    if args.city:
        from urbansense.citydemo import main_city

        return main_city(args)
    from urbansense.broker import BrokerUnavailable, find_tool

    try:
        find_tool("mosquitto")
    except BrokerUnavailable as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    # The gateways' logs go to a file: the terminal shows progress and the summary.
    logging.basicConfig(filename=args.out / "gateway.log", filemode="w", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    try:
        summary = asyncio.run(run_demo(args))
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(render(summary))
    return 0 if verdict_ok(summary["total"]) else 1


async def _subscribe(host: str, port: int, rx: Received) -> None:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from urbansense.wire.senml_reader import frames_from_pack

    # A persistent session (no clean start, an hour's expiry): packs a gateway publishes while
    # this consumer reconnects after a broker restart wait for it in the broker instead of
    # going to no subscriber, which a ledger would count as lost at the gateway.
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    while True:
        try:
            async with aiomqtt.Client(host, port, identifier="urbansense-demo-consumer",
                                      protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
                                      properties=props) as client:
                await client.subscribe("urbansense/v1/+/+/up", qos=1)
                rx.ready.set()
                async for msg in client.messages:
                    if not isinstance(msg.payload, bytes):
                        continue
                    gw_id = str(msg.topic).split("/")[3]
                    rx.messages += 1
                    rx.bytes += len(msg.payload)
                    try:
                        frames = frames_from_pack(msg.payload)
                    except ValueError:  # not one of our packs: counted, never fatal
                        rx.bad_packs += 1
                        continue
                    for node_id, fcnt, values in frames:
                        rx.frames[(node_id, fcnt)].append((gw_id, values))
        except aiomqtt.MqttError:
            rx.ready.clear()
            await asyncio.sleep(0.2)


async def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.app import Gateway
    from gateway.config import BrokerAddress, GatewayConfig
    from gateway.registry import NodeSpec, write_registry
    from simulator import scenario as scenario_mod
    from simulator.sim import Simulation
    from urbansense.broker import Broker

    out: Path = args.out
    log_path = out / "gateway.log"
    t_start = time.monotonic()
    say = Say(args.json)

    work = Path(tempfile.mkdtemp(prefix="urbansense-demo-"))
    broker = Broker(work / "mosquitto").start()
    say(f"broker: private mosquitto on {broker.host}:{broker.port}")

    sc = scenario_mod.load(args.scenario)
    for i, spec in enumerate(sc.gateways):
        spec["sim_socket"] = str(work / f"air-{i}.sock")
    sim = Simulation(sc, seed=args.seed, nodes=args.nodes, serial="pty")
    truth_path = out / "truth.jsonl"
    sim.open_truth(truth_path)
    nodes = sim.registry()
    by_id = {n.node_id: n for n in nodes}
    counts = Counter(n.kind for n in nodes)
    say(f"scenario: {sc.name}, {len(nodes)} nodes ({', '.join(f'{counts[k]} {k}' for k in KINDS)}), "
        f"{sum(n.transport == 'serial' for n in nodes)} on serial ptys, {len(sim.gateways)} gateways")

    gateways: list[Gateway] = []
    tasks: list[asyncio.Task[None]] = []
    rx = Received()
    sub_task = asyncio.create_task(_subscribe(broker.host, broker.port, rx))
    sim_thread = None
    try:
        for i, g in enumerate(sim.gateways):
            gdir = work / g.gw_id
            gdir.mkdir()
            registry = gdir / "nodes.jsonl"
            write_registry(registry, [NodeSpec(n.node_id, n.kind, bytes.fromhex(n.key_hex)) for n in nodes])
            cfg = GatewayConfig(site="angers", gateway_id=g.gw_id, registry=registry, data_dir=gdir / "data")
            cfg.mqtt.brokers = [BrokerAddress(broker.host, broker.port)]
            cfg.ble.enabled = True
            cfg.ble.backend = "datagram"
            cfg.ble.datagram_socket = str(sc.gateways[i]["sim_socket"])
            cfg.serial.ports = [n.serial_path for n in nodes
                                if n.transport == "serial" and n.gateway == g.gw_id and n.serial_path]
            cfg.http.port = 0
            cfg.validate()
            gw = Gateway(cfg)
            gateways.append(gw)
            tasks.append(asyncio.create_task(gw.run(), name=f"gateway {g.gw_id}"))
        await asyncio.wait_for(asyncio.gather(*(gw.started.wait() for gw in gateways), rx.ready.wait()), 30)
        for gw in gateways:
            say(f"gateway {gw.config.gateway_id}: status page http://127.0.0.1:{gw.http_port}/ "
                f"(metrics at /metrics)")

        sim_duration_s = args.duration * args.speed
        say(f"running {args.duration:.0f} s of wall time at {args.speed:g}x = "
            f"{sim_duration_s / 3600:.1f} h simulated")
        sim_t0 = time.monotonic()
        sim_thread = sim.start_realtime(sim_duration_s, speed=args.speed)
        await _progress(sim_thread, gateways, rx, say, args.duration)
        await asyncio.to_thread(sim_thread.join)
        sim_wall_s = time.monotonic() - sim_t0
        sim_summary = sim.last_summary or sim.summary()
        drained = await _drain(gateways, rx)
        if not drained:
            say("warning: gateways did not drain within the deadline")
        plots: list[str] = []
        if not args.no_plots:
            try:
                from simulator.plots import write_plots

                plots = write_plots(sim, out / "plots")
            except ImportError as exc:  # matplotlib missing: the summary still stands
                say(f"plots skipped: {exc}")
        summary = compare(sim, by_id, rx, gateways)
        summary["simulation"] = {
            "scenario": sc.name,
            "seed": sim.seed,
            "simulated_s": sim_summary.get("duration_s"),
            "speed": args.speed,
            # The simulator and the gateways share this process: did the run keep its pace?
            "achieved_speed": round((sim_summary.get("duration_s") or 0.0) / sim_wall_s, 1),
            "sim_wall_s": round(sim_wall_s, 1),
            "nodes": dict(counts),
            "gateways": [g.gw_id for g in sim.gateways],
        }
        summary["energy"] = sim_summary.get("energy", {})
        summary["battery_life_years"] = sim_summary.get("battery_life_years", {})
        summary["cell"] = sim_summary.get("cell", {})
        summary["gateway"] = {
            gw.config.gateway_id: {
                "accepted": gw.metrics.frames_accepted.total(),
                "duplicates": gw.metrics.duplicates.total(),
                "rejections": {k: v for k, v in gw.metrics.rejections.values.items() if v},
                "batches": gw.metrics.published_batches.total(),
                "published_bytes": gw.metrics.published_bytes.total(),
                "disk_bytes_per_reading": gw.status()["outbox"]["disk_bytes_per_reading"],
            }
            for gw in gateways
        }
        summary["broker"] = {"messages": rx.messages, "bytes": rx.bytes, "bad_packs": rx.bad_packs}
        summary["files"] = {"truth": str(truth_path), "gateway_log": str(log_path), "plots": plots}
        summary["wall_s"] = round(time.monotonic() - t_start, 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        return summary
    finally:
        if sim_thread is not None and sim_thread.is_alive():
            sim.stop()
            await asyncio.to_thread(sim_thread.join, 10)
        for gw in gateways:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gw.stop(), 10)
        for t in [*tasks, sub_task]:
            t.cancel()
        await asyncio.gather(*tasks, sub_task, return_exceptions=True)
        sim.close()
        broker.stop()


class Say:
    """Progress and notes go to stderr, so --json keeps stdout for the summary alone."""

    def __init__(self, quiet_tty: bool) -> None:
        self.tty = sys.stderr.isatty() and not quiet_tty

    def __call__(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)


async def _progress(sim_thread: Any, gateways: list[Any], rx: Received, say: Say, duration_s: float) -> None:
    t0 = time.monotonic()
    last_t, last_frames = t0, 0
    every_s = 1.0 if say.tty else 10.0
    while sim_thread.is_alive():
        # Refresh the display every every_s, or at once when the simulation ends.
        await asyncio.to_thread(sim_thread.join, every_s)
        if not sim_thread.is_alive():
            break
        now = time.monotonic()
        heard = len({n for n, _ in rx.frames})
        frames = len(rx.frames)
        rate = (frames - last_frames) / (now - last_t)
        last_t, last_frames = now, frames
        outbox = sum(int(gw.metrics.outbox_depth.get()) for gw in gateways)
        rejections = sum(gw.metrics.rejections.total() for gw in gateways)
        batches = sum(gw.metrics.published_batches.total() for gw in gateways)
        line = (f"[{now - t0:5.0f}/{duration_s:.0f} s] nodes heard {heard:5d}  frames {frames:6d}  "
                f"{rate:6.1f} frames/s  batches {batches:5.0f}  outbox {outbox:3d}  "
                f"rejections {rejections:.0f}")
        if say.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            say(line)
    if say.tty:
        print(file=sys.stderr)


async def _drain(gateways: list[Any], rx: Received) -> bool:
    """Wait until every accepted frame is published and the subscriber has every batch."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        done = all(
            gw.metrics.published_readings.total() >= gw.metrics.frames_accepted.total()
            and gw.metrics.outbox_depth.get() == 0
            for gw in gateways
        ) and rx.messages >= sum(gw.metrics.published_batches.total() for gw in gateways)
        if done:
            return True
        await asyncio.sleep(0.1)
    return False


def render(s: dict[str, Any]) -> str:
    t = s["total"]
    lines = [
        "",
        f"urbansense demo: {s['simulation']['scenario']}, {sum(s['simulation']['nodes'].values())} nodes, "
        f"{s['simulation']['simulated_s'] / 3600:.1f} h simulated in {s['wall_s']:.0f} s",
        "",
        f"{'':10s}{'sent':>8s}{'lost air':>10s}{'delivered':>11s}{'missing':>9s}{'dup':>6s}{'wrong':>7s}",
    ]
    for kind, c in [*s["per_kind"].items(), ("total", t)]:
        lines.append(f"{kind:10s}{c['sent']:8d}{c['lost_on_air']:10d}{c['delivered']:11d}"
                     f"{c['missing']:9d}{c['duplicated']:6d}{c['wrong']:7d}")
    lines.append(f"(frames heard by both gateways and deduplicated by the consumer: {t['cross_gateway_copies']})")
    lines.append("")
    lines.append("energy and battery life (one 3.6 V 19 Ah Li-SOCl2 cell):")
    for kind, e in sorted(s.get("energy", {}).items()):
        life = s.get("battery_life_years", {}).get(kind, {})
        lines.append(f"  {kind:8s} average {e['avg_current_ua']['mean']:7.1f} uA  "
                     f"battery life p50 {life.get('p50', float('nan')):5.1f} y (min {life.get('min', float('nan')):5.1f} y)")
    lines.append("")
    lines.append(f"truth: {s['files']['truth']}   gateway log: {s['files']['gateway_log']}")
    if s["files"]["plots"]:
        lines.append("plots: " + ", ".join(s["files"]["plots"]))
    if t["lost_at_gateway"] or t["undecodable"]:
        lines.append(f"(lost at the gateway boundary: {t['lost_at_gateway']}, undecodable: {t['undecodable']})")
    lines.append(f"verdict: {'OK' if verdict_ok(t) else 'FAILED'} (duplicated, wrong, missing and undecodable must be 0)")
    return "\n".join(lines)
