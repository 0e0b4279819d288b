"""Serial nodes: a pty pair opened with pyserial like /dev/ttyUSB0, acks back to the node."""

from __future__ import annotations

import random
import types
from typing import Any

import serial

from simulator.serial_link import PtyLink, add_noise
from simulator.sim import Simulation
from urbansense.wire import framing
from urbansense.wire.protocol import NodeKeys, encode_ack, parse_header, verify_uplink


class _Books:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.acked: list[int] = []
        self.delivered: list[int] = []

    def register_serial_frame(self, node: Any, t: float, frame: bytes, gw: str) -> int:
        self.sent.append(frame)
        return len(self.sent) - 1

    def mark_serial_delivered(self, node: Any, idx: int) -> None:
        self.delivered.append(idx)

    def mark_acked(self, node: Any, fcnt: int) -> None:
        self.acked.append(fcnt)


def test_pty_round_trip_with_pyserial() -> None:
    books = _Books()
    node = types.SimpleNamespace(sim=types.SimpleNamespace(ledger=books), rng_hw=random.Random(1),
                                 node_id=0x03000001, t=0.0)
    link = PtyLink(node, "gw-1")  # type: ignore[arg-type]
    try:
        port = serial.Serial(link.slave_path, 115200, timeout=1.0)
        frame = bytes.fromhex("10010000030500") + b"\xa0" + bytes(4)
        link.node_write(node, framing.wrap(frame))  # type: ignore[arg-type]
        got = port.read_until(b"\x00")
        assert framing.unwrap(got[:-1]) == frame
        assert books.sent == [frame] and books.delivered == [0]
        keys = NodeKeys(bytes(16))
        ack = framing.wrap(encode_ack(keys, node.node_id, 1, 5))
        port.write(ack)
        port.flush()
        link.wait(node, 0.5)  # type: ignore[arg-type]
        assert link.rx_available(node) == len(ack)  # type: ignore[arg-type]
        assert link.rx_read(node, None) == ack  # type: ignore[arg-type]
        assert books.acked == [5]
        port.close()
    finally:
        link.close()


def test_line_noise_flips_bits_at_the_rate_asked() -> None:
    rng = random.Random(2)
    data = bytes(10_000)
    noisy = add_noise(data, 1e-3, rng)
    flipped = sum(bin(b).count("1") for b in noisy)
    assert 60 < flipped < 100  # 80 expected
    assert add_noise(data, 0.0, rng) == data


def test_serial_nodes_are_acked_through_the_loopback_gateway() -> None:
    sc = {
        "sim": {"name": "serial", "seed": 5},
        "gateways": [{"id": "gw-1", "x": 0.0, "y": 0.0}],
        "nodes": [{"kind": "water", "count": 2, "transport": "serial", "gateway": "gw-1"},
                  {"kind": "bin", "count": 1, "transport": "serial", "sensor": "jsnsr04t",
                   "line_noise_ber": 1e-4}],
    }
    sim = Simulation(sc)
    summary = sim.run(6 * 3600.0)
    assert summary["firmware_errors"] == {}
    serial_frames = [f for f in sim.frames if f.transport == "serial"]
    assert len(serial_frames) > 10
    assert sum(f.acked for f in serial_frames) >= len(serial_frames) - 2
    node = sim.nodes[0]
    keys = NodeKeys(node.key)
    last = None
    for f in (f for f in serial_frames if f.node == node.index):
        up = verify_uplink(keys, f.payload, parse_header(f.payload), last)
        assert up.fcnt == f.fcnt
        last = up.fcnt
