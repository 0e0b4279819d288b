"""A small district through the real gateway to a real mosquitto: every frame the nodes sent
either reached the broker exactly once with the readings the firmware encoded, or is
accounted for as lost on air / at the gateway boundary / unacknowledged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import BrokerAddress, GatewayConfig
from gateway.registry import NodeSpec, write_registry
from simulator.sim import Simulation
from tests.test_gw_support import Subscriber, wait_for
from urbansense.wire.quantities import BY_FIELD


def _scenario(air: str) -> dict[str, Any]:
    return {
        "sim": {"name": "e2e", "seed": 21},
        "gateways": [{"id": "gw-1", "x": 0.0, "y": 0.0, "sim_socket": air}],
        "nodes": [
            {"kind": "parking", "count": 4, "area": [0, 0, 60, 60]},
            {"kind": "water", "count": 2, "area": [0, 0, 60, 60]},
            {"kind": "bin", "count": 1, "area": [0, 0, 60, 60]},
            {"kind": "parking", "count": 2, "area": [150, 150, 200, 200]},  # mostly out of reach
            {"kind": "water", "count": 1, "transport": "serial", "gateway": "gw-1"},
            {"kind": "bin", "count": 1, "transport": "serial", "sensor": "jsnsr04t", "gateway": "gw-1"},
        ],
    }


@pytest.fixture
async def sub(mqtt_broker: Any) -> AsyncIterator[Subscriber]:
    s = Subscriber(mqtt_broker).start()
    await asyncio.wait_for(s.ready.wait(), 10)
    yield s
    await s.stop()


async def test_ground_truth_matches_the_broker(tmp_path: Path, mqtt_broker: Any, sub: Subscriber) -> None:
    air = str(tmp_path / "air.sock")
    sim = Simulation(_scenario(air), serial="pty")
    reg = tmp_path / "nodes.jsonl"
    write_registry(reg, [NodeSpec(n.node_id, n.kind, bytes.fromhex(n.key_hex)) for n in sim.registry()])
    cfg = GatewayConfig(site="sim-site", gateway_id="gw-1", registry=reg, data_dir=tmp_path / "data")
    cfg.mqtt.brokers = [BrokerAddress(mqtt_broker.host, mqtt_broker.port)]
    cfg.http.port = 0
    cfg.batch.max_age_s = 0.2
    cfg.batch.ack_max_delay_ms = 20
    cfg.serial.ports = list(sim.serial_ports().values())
    cfg.ble.enabled = True
    cfg.ble.backend = "datagram"
    cfg.ble.datagram_socket = air
    gw = Gateway(cfg)
    task = asyncio.create_task(gw.run())
    try:
        await asyncio.wait_for(gw.started.wait(), 10)
        assert gw.ble is not None
        await asyncio.wait_for(gw.ble.started.wait(), 5)
        for port in gw.serial_ports:
            await asyncio.wait_for(port.opened.wait(), 5)
        sim.open_truth(tmp_path / "truth.jsonl")
        th = sim.start_realtime(2 * 3600.0, speed=1800.0)  # two hours in ~4 s
        await asyncio.to_thread(th.join, 60.0)
        assert sim.last_summary is not None
        truth = [json.loads(x) for x in (tmp_path / "truth.jsonl").read_text().splitlines()]
        # handed to the gateway: over its bleak backend's socket, or acknowledged on serial
        must = {(r["node_id"], r["fcnt"]) for r in truth
                if (r["transport"] == "ble" and r["delivered_to"]) or r.get("acked")}
        await wait_for(lambda: must <= set(sub.keys()), timeout_s=15, what="every heard frame at the broker")
        await asyncio.sleep(0.5)  # let any duplicate surface
    finally:
        await asyncio.wait_for(gw.stop(), 10)
        await task
        sim.close()
    # the truth holds what the firmware encoded, opened by the firmware's own codec: all of it
    assert sim.last_summary["decode_errors"] == {}
    assert not [r for r in truth if "decode_error" in r]
    sent = {(r["node_id"], r["fcnt"]): r for r in truth}
    delivered = sub.keys()
    assert len(delivered) == len(set(delivered)), "duplicates at the broker"
    assert set(delivered) <= set(sent), "a frame at the broker that no node sent"
    lost = [k for k, r in sent.items() if r["lost_on_air"]]
    at_boundary = [k for k, r in sent.items() if r["lost_at_gateway_boundary"]]
    unacked = [k for k, r in sent.items() if r["transport"] == "serial" and not r["acked"]]
    # every frame missing at the broker is accounted for: lost on air, never handed to the
    # gateway (its socket refused the datagram), or not acknowledged on serial
    assert set(sent) - set(delivered) <= set(lost) | set(at_boundary) | set(unacked)
    assert all(set(sent[k]["heard_by"]) >= set(sent[k]["undelivered_to"]) for k in at_boundary)
    assert len(must) >= 20 and lost  # a real run: frames through, and some lost on the far street
    by_key = {(n, f): v for n, f, v in sub.frames}
    for key in must:
        for field, raw in sent[key]["readings"].items():  # every reading, as the firmware sent it
            q = BY_FIELD[field]
            got = by_key[key][q.senml_name]
            if q.boolean:
                assert got is bool(raw), (key, field)
            else:
                assert got == q.senml_value(raw), (key, field)
