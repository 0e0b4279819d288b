"""A week in the field (make soak): angers-centre for 7 simulated days with both gateways in
the loop as processes, through random faults, and the ledger against the ground truth.

Faults: each gateway crashes (SIGKILL) or loses power (SIGKILL, then its files as a power cut
leaves them: tests/support/powercut.py) about twice a simulated day and comes back a few
simulated minutes later; the broker goes away for a while about once a day; nodes brown out
and reboot every day (1 % each) and clocks jump (the scenario's faults, repeated daily).

Ledger: every frame the nodes sent (the simulator's truth) is at the broker, or its loss has
one of the stated causes: ``lost_on_air`` (no gateway heard it), ``gateway_down_or_full`` (heard,
but the socket of every gateway that heard it refused the datagram: the gateway was down, or
its queue full), ``cut_window`` (handed to
gateways that each crashed or lost power less than ``batch.durable_ms`` + ``SLACK_S`` of wall
time later: docs/GATEWAY.md "What is promised"), ``serial_unacked`` (a serial frame no gateway
acknowledged: still in the node's backlog at the end, or dropped from it and counted by the
node), ``in_an_outbox_at_the_end`` (not lost: a gateway still held it for the broker when the
run stopped). Anything else is ``unexplained`` and fails the test, as does a frame at the broker with
other values than the node sent (``wrong``) or that no node sent. Copies of one (node, fcnt)
(two gateways heard it; a batch re-published after a crash lost its delete) are counted, and
must carry the same values.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.outbox import load_pack
from gateway.registry import NodeSpec, write_registry
from simulator import scenario as scenario_mod
from simulator.sim import Simulation
from tests.conftest import BrokerFactory
from tests.support import powercut
from tests.test_gw_crash import GatewayProcess
from tests.test_gw_powercut import shim  # noqa: F401  (the fixture)
from urbansense.demo import Received, _expected_values, _same
from urbansense.demo_run import _subscribe
from urbansense.wire.senml_reader import frames_from_pack

ROOT = Path(__file__).resolve().parents[1]
DAYS = int(os.environ.get("URBANSENSE_SOAK_DAYS", "7"))
SPEED = float(os.environ.get("URBANSENSE_SOAK_SPEED", "1000"))
DURABLE_MS = 1000  # the default
SLACK_S = 1.5  # socket -> verify on a loaded 2-core machine shared with the simulator
OUT = Path(os.environ.get("URBANSENSE_SOAK_OUT", "out/soak-week.json"))


def _week_scenario(rng: random.Random) -> scenario_mod.Scenario:
    sc = scenario_mod.load(ROOT / "scenarios" / "angers-centre.toml")
    sc.duration_s = DAYS * 86400.0
    daily = [f for f in sc.faults if f.kind in ("brownout", "reboot", "clock_jump")]
    for day in range(1, DAYS):
        for f in daily:
            sc.faults.append(scenario_mod.Fault(f.kind, day * 86400.0 + rng.uniform(0, 86400.0),
                                                fraction=f.fraction, value=f.value))
    return sc


def _gateway_config(path: Path, gw_id: str, broker: Any, air: str, ports: list[str]) -> None:
    listed = ", ".join(f'"{p}"' for p in ports)
    path.write_text(f"""
[gateway]
site = "angers"
id = "{gw_id}"
registry = "nodes.jsonl"
data_dir = "data"
[batch]
durable_ms = {DURABLE_MS}
[mqtt]
brokers = ["{broker.host}:{broker.port}"]
backoff_min_s = 0.2
backoff_max_s = 2.0
[serial]
ports = [{listed}]
retry_min_s = 0.1
retry_max_s = 0.5
[ble]
enabled = true
backend = "datagram"
datagram_socket = "{air}"
[http]
enabled = false
""")


@pytest.mark.slow
@pytest.mark.timeout(7200)
async def test_a_week_in_the_field(tmp_path: Path, mqtt_broker_factory: BrokerFactory, shim: Path) -> None:  # noqa: F811
    rng = random.Random(15)
    wall0 = time.monotonic()
    broker = mqtt_broker_factory(persistence=True)
    sc = _week_scenario(rng)
    for i, spec in enumerate(sc.gateways):
        spec["sim_socket"] = str(tmp_path / f"air-{i}.sock")
    sim = Simulation(sc, serial="pty")
    sim.open_truth(tmp_path / "truth.jsonl")
    nodes = sim.registry()
    gws: dict[str, GatewayProcess] = {}
    data: dict[str, Path] = {}
    for i, g in enumerate(sim.gateways):
        gdir = tmp_path / g.gw_id
        gdir.mkdir()
        write_registry(gdir / "nodes.jsonl", [NodeSpec(n.node_id, n.kind, bytes.fromhex(n.key_hex)) for n in nodes])
        ports = [str(n.serial_path) for n in nodes if n.transport == "serial" and n.gateway == g.gw_id]
        _gateway_config(gdir / "gateway.toml", g.gw_id, broker, str(sc.gateways[i]["sim_socket"]), ports)
        gws[g.gw_id] = GatewayProcess(gdir / "gateway.toml")
        data[g.gw_id] = gdir / "data"
    rx = Received()
    sub = asyncio.create_task(_subscribe(broker.host, broker.port, rx))
    # (wall time, simulated time) every 0.1 s: what the simulator had sent when, for the windows
    clock: list[tuple[float, float]] = []
    cuts: dict[str, list[tuple[float, float, str]]] = {g: [] for g in gws}  # (sim from, sim to, kind)
    faults: Counter[str] = Counter()
    sim_thread = None
    loop = asyncio.get_running_loop()

    async def start(gw_id: str) -> None:
        await asyncio.to_thread(powercut.arm, data[gw_id])
        gws[gw_id].env = powercut.env(data[gw_id], shim)
        await gws[gw_id].start()

    def sim_at(wall: float) -> float:
        """Simulated time the simulator had reached at a wall time (its clock, sampled)."""
        best = 0.0
        for w, s in clock:
            if w <= wall:
                best = s
        return best

    try:
        await asyncio.wait_for(rx.ready.wait(), 10)
        for gw_id in gws:
            await start(gw_id)
        sim_thread = sim.start_realtime(sc.duration_s, speed=SPEED)
        end_sim = sc.duration_s
        # Fault plan in simulated time: gateway faults ~2/day each, broker outages ~1/day.
        plan: list[tuple[float, str, str]] = []
        for gw_id in gws:
            t = rng.uniform(3600, 43200)
            while t < end_sim - 7200:
                plan.append((t, "gateway", gw_id))
                t += rng.uniform(6 * 3600, 18 * 3600)
        t = rng.uniform(3600, 86400)
        while t < end_sim - 7200:
            plan.append((t, "broker", ""))
            t += rng.uniform(12 * 3600, 36 * 3600)
        plan.sort()
        down_until: dict[str, float] = {}
        broker_back = None
        while sim_thread.is_alive():
            now_sim = sim.engine.now
            clock.append((time.monotonic(), now_sim))
            while plan and plan[0][0] <= now_sim:
                _, what, gw_id = plan.pop(0)
                if what == "broker" and broker.running:
                    broker.stop()
                    broker_back = now_sim + rng.uniform(600, 4 * 3600)
                    faults["broker_outage"] += 1
                elif what == "gateway" and gw_id not in down_until:
                    kind = rng.choice(["crash", "power_cut"])
                    wall = time.monotonic()
                    assert await gws[gw_id].kill() == -signal.SIGKILL
                    if kind == "power_cut":
                        await asyncio.to_thread(powercut.cut, data[gw_id], rng, rng.random() < 0.5)
                    cuts[gw_id].append((sim_at(wall - DURABLE_MS / 1000 - SLACK_S), sim.engine.now, kind))
                    down_until[gw_id] = sim.engine.now + rng.uniform(120, 1800)
                    faults[f"gateway_{kind}"] += 1
            for gw_id, until in list(down_until.items()):
                if sim.engine.now >= until:
                    del down_until[gw_id]
                    await start(gw_id)
            if broker_back is not None and sim.engine.now >= broker_back:
                broker.start()
                broker_back = None
            await asyncio.sleep(0.1)
        for gw_id in list(down_until):
            await start(gw_id)
        if not broker.running:
            broker.start()
        # Drain: the serial nodes are asleep now, BLE is done; the outboxes empty to the broker.
        # Quiet for 20 s: longer than a gateway's reconnect backoff after a late broker outage.
        before, deadline = -1, loop.time() + 300
        while loop.time() < deadline:
            await asyncio.sleep(20)
            n = sum(len(v) for v in rx.frames.values())
            if n == before:
                break
            before = n
        for gw in gws.values():
            assert await gw.kill(signal.SIGTERM) == 0
    finally:
        if sim_thread is not None and sim_thread.is_alive():
            sim.stop()
            await asyncio.to_thread(sim_thread.join, 30)
        for gw in gws.values():
            gw.ensure_dead()
        sub.cancel()
        await asyncio.gather(sub, return_exceptions=True)
        sim.close()
    waiting = set().union(*[await asyncio.to_thread(_outbox_keys, d) for d in data.values()])
    ledger = account(sim, rx, cuts, waiting)
    faults.update(f"node_{f.kind}_events" for f in sc.faults if f.kind != "gateway_out_of_range")
    summary = {"days": DAYS, "speed": SPEED, "wall_s": round(time.monotonic() - wall0), "nodes": len(nodes),
               "faults": dict(faults), "node_resets_by_cause": sim.last_summary.get("resets") if sim.last_summary else None,
               "ledger": ledger}
    await asyncio.to_thread(_write_summary, summary)
    print(json.dumps(summary, sort_keys=True))
    assert faults["gateway_crash"] + faults["gateway_power_cut"] >= 2 * DAYS and faults["broker_outage"] >= 1
    assert ledger["unexplained"] == 0 and ledger["wrong"] == 0 and ledger["invented"] == 0, ledger
    assert ledger["at_broker"] > 0.9 * ledger["sent"], ledger


def _write_summary(summary: dict[str, Any]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


def _pack(stored: bytes, crc: int) -> bytes:
    pack = load_pack(stored, crc)
    assert pack is not None, "a stored batch fails its CRC"
    return pack


def _outbox_keys(data: Path) -> set[tuple[int, int]]:
    """(node, fcnt) of the batches a stopped gateway still holds for the broker."""
    db = sqlite3.connect(data / "outbox.db")
    try:
        return {(n, f) for p, c in db.execute("SELECT payload, crc FROM batches")
                for n, f, _ in frames_from_pack(_pack(p, c))}
    finally:
        db.close()


def account(sim: Simulation, rx: Received, cuts: dict[str, list[tuple[float, float, str]]],
            waiting: set[tuple[int, int]]) -> dict[str, Any]:
    ids = [g.gw_id for g in sim.gateways]
    nodes = sim.nodes_by_index
    c: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    sent: set[tuple[int, int]] = set()
    for fr in sim.frames:
        c["sent"] += 1
        if fr.decode_error is not None:
            c["unexplained"] += 1  # the firmware's own codec cannot open it
            continue
        key = (nodes[fr.node].node_id, fr.fcnt)
        sent.add(key)
        copies = rx.frames.get(key, [])
        if copies:
            c["at_broker"] += 1
            c["copies"] += len(copies) - 1
            expected = _expected_values(fr.readings)
            c["wrong"] += not all(_same(expected, values) for _, values in copies)
            continue
        if key in waiting:  # kept, not lost: the broker had not taken it when the run ended
            c["in_an_outbox_at_the_end"] += 1
        elif fr.transport == "serial":
            c["serial_unacked" if not fr.acked else "unexplained"] += 1
        elif not fr.heard:
            c["lost_on_air"] += 1
        elif not fr.delivered:
            c["gateway_down_or_full"] += 1
        elif all(any(lo <= fr.t <= hi for lo, hi, _ in cuts[ids[i]])
                 for i in range(len(ids)) if fr.delivered >> i & 1):
            c["cut_window"] += 1
        else:
            c["unexplained"] += 1
            if len(examples) < 20:  # what a diagnosis needs: when, where, the nearest cut
                near = [(round(fr.t - hi, 1), kind) for i in range(len(ids)) if fr.delivered >> i & 1
                        for lo, hi, kind in cuts[ids[i]] if fr.t <= hi]
                examples.append({"node": key[0], "fcnt": key[1], "t_sim": round(fr.t, 1),
                                 "delivered_to": [ids[i] for i in range(len(ids)) if fr.delivered >> i & 1],
                                 "next_cut_s_after": max(near) if near else None})
    c["invented"] = sum(1 for k in rx.frames if k not in sent)
    for k in ("at_broker", "copies", "wrong", "serial_unacked", "lost_on_air", "gateway_down_or_full",
              "cut_window", "in_an_outbox_at_the_end", "unexplained"):
        c.setdefault(k, 0)
    return {**c, "unexplained_examples": examples}
