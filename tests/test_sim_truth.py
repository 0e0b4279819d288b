"""The truth file: what the firmware encoded (not what the gateway decodes), what went on air,
and which gateways were actually handed each frame."""

from __future__ import annotations

import json
import socket
import threading
import types
from pathlib import Path
from typing import Any

import cbor2
import pytest

import simulator.sim
import urbansense.wire.protocol
from simulator.firmware_loader import firmware_module
from simulator.sim import Simulation
from urbansense.wire.errors import FrameError
from urbansense.wire.quantities import QUANTITIES


def _truth(sim: Simulation, path: Path, duration_s: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    sim.open_truth(path)
    try:
        summary = sim.run(duration_s)
    finally:
        sim.close()
    return summary, [json.loads(x) for x in path.read_text().splitlines()]


class _Listener:
    """A gateway's bleak backend socket, drained in a thread."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.5)
        self.got: list[list[Any]] = []
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                self.got.append(cbor2.loads(self.sock.recv(512)))
            except TimeoutError:
                return

    def close(self) -> list[list[Any]]:
        self.thread.join()
        self.sock.close()
        return self.got


def test_a_frame_heard_but_refused_by_the_gateway_socket_is_lost_at_the_boundary(tmp_path: Path) -> None:
    """heard_by is the air; delivered_to is what the gateway's socket took (a failed
    send_datagram once only bumped a counter, so the truth said "heard")."""
    live = str(tmp_path / "live.sock")
    dead = str(tmp_path / "dead.sock")  # nobody listens: the datagram is refused
    sc = {
        "sim": {"name": "boundary", "seed": 8},
        "gateways": [{"id": "gw-live", "x": 0.0, "y": 0.0, "sim_socket": live},
                     {"id": "gw-dead", "x": 600.0, "y": 0.0, "sim_socket": dead}],
        "nodes": [{"kind": "parking", "count": 2, "area": [0, 0, 10, 10]},
                  {"kind": "parking", "count": 2, "area": [590, 0, 600, 10]}],
    }
    rx = _Listener(live)
    try:
        summary, truth = _truth(Simulation(sc), tmp_path / "truth.jsonl", 3600.0)
    finally:
        got = rx.close()
    heard_live = [r for r in truth if "gw-live" in r["heard_by"]]
    heard_dead_only = [r for r in truth if r["heard_by"] == ["gw-dead"]]
    assert heard_live and heard_dead_only
    for r in truth:
        assert "gw-dead" not in r["delivered_to"]
        assert ("gw-dead" in r["undelivered_to"]) == ("gw-dead" in r["heard_by"])
        assert r["delivered_to"] == (["gw-live"] if "gw-live" in r["heard_by"] else [])
        assert r["lost_at_gateway_boundary"] == (r["heard_by"] == ["gw-dead"])
        assert r["lost_on_air"] == (not r["heard_by"])
    assert summary["frames"]["total"]["lost_at_gateway"] == len(heard_dead_only)
    assert summary["air"]["datagram_errors"] == sum(r["datagram_errors"] for r in truth) > 0
    assert len(got) == summary["air"]["datagrams"]


def test_truth_readings_are_what_the_firmware_encoded_not_what_the_gateway_decodes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway decoder bug must not reach the truth file (it once decoded with verify_uplink)."""
    us_proto = firmware_module("us_proto")

    encoded: dict[str, tuple[int, int, int, dict[int, Any]]] = {}
    encode = us_proto.encode_uplink

    def spy(keys: Any, node_id: int, fcnt: int, ftype: int, readings: dict[int, Any], max_len: int = 27) -> bytes:
        frame: bytes = encode(keys, node_id, fcnt, ftype, readings, max_len)
        encoded[frame.hex()] = (node_id, fcnt, ftype, dict(readings))
        return frame

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise FrameError("bad_mic")

    monkeypatch.setattr(us_proto, "encode_uplink", spy)
    monkeypatch.setattr(urbansense.wire.protocol, "verify_uplink", broken)
    monkeypatch.setattr(simulator.sim, "verify_uplink", broken)
    sc = {"sim": {"name": "fw-truth", "seed": 12}, "gateways": [{"id": "gw"}],
          "nodes": [{"kind": k, "count": 2, "area": [0, 0, 20, 20]} for k in ("parking", "bin", "water")]}
    summary, truth = _truth(Simulation(sc), tmp_path / "truth.jsonl", 6 * 3600.0)
    assert len(truth) == len(encoded) > 30 and summary["decode_errors"] == {}
    names = {q.field: q.key for q in QUANTITIES.values()}
    for r in truth:
        node_id, fcnt, ftype, readings = encoded[r["frame_hex"]]
        assert (r["node_id"], r["fcnt"], r["ftype"]) == (node_id, fcnt, urbansense.wire.protocol.TYPE_NAMES[ftype])
        assert {names[f]: v for f, v in r["readings"].items()} == readings


def _advertiser(*adverts: bytes) -> types.ModuleType:
    fw = types.ModuleType("garbage_node")

    def run_cycle(hal: Any) -> int:
        ble = hal.bluetooth.BLE()
        ble.active(True)
        for adv in adverts:
            ble.gap_advertise(100_000, adv_data=adv, connectable=False)
            hal.time.sleep_ms(350)
        ble.gap_advertise(None)
        ble.active(False)
        return 3_600_000

    fw.run_cycle = run_cycle  # type: ignore[attr-defined]
    return fw


def test_adverts_the_firmware_codec_cannot_open_still_go_on_air_flagged(tmp_path: Path) -> None:
    """They once never reached the air model, so a gateway never saw a malformed advert."""
    garbage = bytes([30, 0xFF, 0xFF, 0xFF]) + bytes(27)  # manufacturer data, not a frame
    flags = bytes([2, 0x01, 0x06, 5, 0x09]) + b"node"  # Flags + Complete Local Name: no manufacturer data
    path = str(tmp_path / "gw.sock")
    sc = {"sim": {"name": "garbage", "seed": 3}, "gateways": [{"id": "gw", "sim_socket": path}],
          "nodes": [{"kind": "water", "count": 1, "area": [0, 0, 1, 1]}]}
    rx = _Listener(path)
    try:
        summary, truth = _truth(Simulation(sc, firmware=_advertiser(garbage, flags)), tmp_path / "t.jsonl", 1800.0)
    finally:
        got = rx.close()
    assert [(r["decode_error"], r["fcnt"], r["readings"]) for r in truth] == [
        ("version", None, {}), ("not_manufacturer_data", None, {})]
    assert all(r["heard_by"] == ["gw"] and r["delivered_to"] == ["gw"] for r in truth)
    assert truth[0]["frame_hex"] == bytes(27).hex() and truth[1]["frame_hex"] == flags.hex()
    assert {bytes(p) for _, _, m in got for p in m.values()} == {bytes(27)}  # as the scanner saw it
    assert any(m == {} for _, _, m in got)  # the advert without manufacturer data, too
    assert summary["decode_errors"] == {"not_manufacturer_data": 1, "version": 1}
    assert summary["frames"]["water"]["by_type"] == {"undecodable": 2}
