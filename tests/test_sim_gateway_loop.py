"""Gateway in the loop: adverts as datagrams on a UNIX socket, the realtime bridge, the registry."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from simulator.sim import Simulation
from urbansense.wire.advert import decode_advert
from urbansense.wire.protocol import NodeKeys, parse_header, verify_uplink

SCENARIO = {
    "sim": {"name": "loop", "seed": 9},
    "gateways": [{"id": "gw-1", "x": 0.0, "y": 0.0}],
    "nodes": [{"kind": "parking", "count": 3, "area": [0, 0, 10, 10]},
              {"kind": "water", "count": 1, "transport": "serial", "area": [0, 0, 10, 10]}],
}


def test_adverts_reach_the_gateway_socket_as_datagram_input_adverts(tmp_path: Path) -> None:
    path = str(tmp_path / "gw.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(0.5)
    got: list[list[object]] = []

    def reader() -> None:  # the gateway's side: drain the socket as it fills
        while True:
            try:
                got.append(list(decode_advert(rx.recv(513))))
            except TimeoutError:
                return

    th = threading.Thread(target=reader)
    th.start()
    sc = dict(SCENARIO)
    sc["gateways"] = [{"id": "gw-1", "x": 0.0, "y": 0.0, "sim_socket": path}]
    sim = Simulation(sc)
    keys = {n.node_id: NodeKeys(bytes.fromhex(n.key_hex)) for n in sim.registry()}
    try:
        sim.run(1800.0)
        th.join()
    finally:
        sim.close()
        rx.close()
    assert got and len(got) == sim.air.stats.datagrams
    ble_frames = {f.payload for f in sim.frames if f.transport == "ble" and f.heard}
    seen = set()
    for address, rssi, mfr in got:  # type: ignore[misc]
        assert isinstance(address, str) and len(address) == 17
        assert -100 < rssi < 0
        (company, payload), = mfr.items()
        assert company == 0xFFFF
        hdr = parse_header(payload)
        verify_uplink(keys[hdr.node_id], payload, hdr, None)
        seen.add(payload)
    assert seen == ble_frames


def test_realtime_bridge_paces_the_run() -> None:
    sim = Simulation(SCENARIO)
    t0 = time.monotonic()
    sim.run_realtime(120.0, speed=600.0)  # 120 s simulated in ~0.2 s
    wall = time.monotonic() - t0
    sim.close()
    assert 0.18 <= wall < 5.0
    assert sim.engine.now == 120.0


def test_registry_gives_what_a_gateway_needs() -> None:
    sim = Simulation(SCENARIO, serial="pty")
    try:
        reg = sim.registry()
        assert [r.kind for r in reg] == ["parking"] * 3 + ["water"]
        assert all(len(bytes.fromhex(r.key_hex)) == 16 for r in reg)
        ports = sim.serial_ports()
        assert list(ports) == ["water-00001"] and ports["water-00001"].startswith("/dev/pts/")
        assert reg[3].serial_path == ports["water-00001"]
    finally:
        sim.close()


def test_background_realtime_run_can_be_stopped() -> None:
    sim = Simulation(SCENARIO)
    th = sim.start_realtime(86400.0, speed=60.0)  # a day would take 24 min
    sim.stop()
    th.join(timeout=5.0)
    sim.close()
    assert not th.is_alive()
    assert sim.last_summary is not None
    assert sim.last_summary["duration_s"] < 120.0


def test_realtime_adverts_flow_from_the_first_seconds(tmp_path: Path) -> None:
    """Cold-boot adverts reach the gateway while the run goes on, not at the first 10-minute
    settling of the air (which at 60x left a demo's gateways deaf for 10 s)."""
    path = str(tmp_path / "gw.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(10.0)
    sc = dict(SCENARIO)
    sc["gateways"] = [{"id": "gw-1", "x": 0.0, "y": 0.0, "sim_socket": path}]
    sim = Simulation(sc)
    th = sim.start_realtime(86400.0, speed=60.0)
    try:
        rx.recv(512)  # the first advert (times out after 10 s of wall time: 600 s simulated)
        heard_at = sim.engine.now
    finally:
        sim.stop()
        th.join(timeout=5.0)
        sim.close()
        rx.close()
    assert heard_at < 120.0
