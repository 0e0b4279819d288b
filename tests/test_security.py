"""Claims of docs/SECURITY.md that no other test checks: TLS that does not verify, what a USB
cable to a node yields, and what the gateway's files and local HTTP port hold."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.flow import Accepted, Heard
from gateway.metrics import Metrics
from gateway.mqttclient import build_client, connect
from gateway.registry import Node, Registry
from gateway.replay import ReplayTable
from gateway.verify import Verifier
from simulator.firmware_loader import firmware_module
from simulator.sim import Simulation
from tests.conftest import BrokerFactory
from tests.test_gw_support import KEYS, Subscriber, make_config, wait_for
from urbansense.broker import TlsMaterial, make_tls_material
from urbansense.wire.protocol import NodeKeys

ROOT = Path(__file__).resolve().parents[1]
us_proto = firmware_module("us_proto")


@pytest.fixture
def close_leaked_tls_sockets() -> Iterator[None]:
    """Closes TLS sockets left open, after the test: when the socket test below fails, its
    leaks would otherwise fail whichever later test the garbage collector runs in."""
    yield
    for o in gc.get_objects():
        if isinstance(o, ssl.SSLSocket) and o.fileno() != -1:
            o.close()


@pytest.mark.parametrize("case", ["foreign_ca", "system_cas", "wrong_name"])
async def test_a_broker_whose_certificate_does_not_verify_gets_nothing(
    case: str, tmp_path: Path, mqtt_broker_factory: BrokerFactory, tls_material: TlsMaterial,
    running: Any,
) -> None:
    """Signed by another CA, by a CA the system does not trust, or for another name: the
    gateway never completes the handshake, publishes nothing, and keeps the frame."""
    host = "127.0.0.2" if case == "wrong_name" else "127.0.0.1"  # the cert names 127.0.0.1
    broker = mqtt_broker_factory(tls=tls_material, host=host)
    cfg = make_config(tmp_path, broker, mqtt__tls=True)
    if case == "foreign_ca":
        cfg.mqtt.ca_file = make_tls_material(tmp_path / "other-ca").ca_cert
    elif case == "wrong_name":
        cfg.mqtt.ca_file = tls_material.ca_cert
    gw = await running(cfg)
    gw.feed(_frame(1, 1), "test")
    await wait_for(lambda: gw.metrics.broker_errors.total() >= 2, what="refused handshakes")
    await wait_for(lambda: gw.metrics.readings_committed.total() == 1, what="kept in the outbox")
    assert gw.publisher is not None and not gw.publisher.connected.is_set()
    assert gw.metrics.published_readings.total() == 0
    assert not any("New client connected" in line for line in broker.log)


def _open_tls_sockets() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, ssl.SSLSocket) and o.fileno() != -1)


@pytest.mark.parametrize("cancelled", [False, True])
async def test_a_tls_connect_that_fails_leaves_no_socket_open_even_when_cancelled(
    cancelled: bool, close_leaked_tls_sockets: None, tmp_path: Path, mqtt_broker_factory: BrokerFactory,
    tls_material: TlsMaterial,
) -> None:
    """paho leaves the socket of a failed TLS handshake open. Cancelled (a gateway stopping
    during a retry), the handshake failed after the cancel and the socket stayed open until
    the garbage collector found it, with a ResourceWarning failing whichever test ran then."""
    broker = mqtt_broker_factory(tls=tls_material)
    cfg = make_config(tmp_path, broker, mqtt__tls=True)
    cfg.mqtt.ca_file = make_tls_material(tmp_path / "other-ca").ca_cert
    before = _open_tls_sockets()
    for i in range(5):
        client, _ = build_client(cfg, cfg.mqtt.brokers[0], False, identifier=f"t{i}", password=None)
        attempt = asyncio.ensure_future(connect(client, cfg.mqtt.connect_timeout_s))
        if cancelled:
            await asyncio.sleep(0)  # one turn: the connect is under way in its thread
            attempt.cancel()
        with pytest.raises(asyncio.CancelledError if cancelled else aiomqtt.MqttError):
            await attempt
    assert _open_tls_sockets() == before


def _frame(node_id: int, fcnt: int, key: bytes | None = None) -> bytes:
    keys = us_proto.Keys(key or KEYS[node_id])
    return us_proto.encode_uplink(keys, node_id, fcnt, 0, {5: 3600, 3: 1000}, 64)  # type: ignore[no-any-return]


def test_a_usb_cable_to_a_node_yields_its_key_and_only_that_nodes_power() -> None:
    """config.json on the node's filesystem holds its root key (what `mpremote cat
    config.json` reads). With it: that node's frames can be forged, and pushing its counter
    ahead silences the genuine node (its frames are then replays) until it is re-keyed; the
    key opens nothing for any other node."""
    sim = Simulation(ROOT / "scenarios" / "smoke.toml", seed=3)
    victim, other = sim.nodes[0], sim.nodes[1]
    stolen = bytes.fromhex(json.loads(victim.files["config.json"])["key"])
    assert stolen == victim.key
    registry = Registry(Node(i.node_id, i.kind, NodeKeys(bytes.fromhex(i.key_hex))) for i in sim.registry())
    v = Verifier(registry, ReplayTable(), Metrics())
    assert isinstance(v.process(Heard(_frame(victim.node_id, 5, stolen), "ble")), Accepted)  # genuine
    assert isinstance(v.process(Heard(_frame(victim.node_id, 30_000, stolen), "ble")), Accepted)  # forged
    assert v.process(Heard(_frame(victim.node_id, 6, stolen), "ble")) is None  # genuine, now silenced
    assert v.metrics.rejections.get("replay") == 1
    assert v.process(Heard(_frame(other.node_id, 1, stolen), "ble")) is None
    assert v.metrics.rejections.get("bad_mic") == 1


async def test_outbox_and_local_http_hold_no_key_and_http_is_local_and_read_only(
    tmp_path: Path, mqtt_broker: Any, running: Any,
) -> None:
    """The SQLite outbox, /metrics and /api/status carry readings and counters, never key
    bytes; the port listens on 127.0.0.1 unless configured otherwise; writes are refused."""
    cfg = make_config(tmp_path, mqtt_broker)
    assert cfg.http.listen == "127.0.0.1"
    gw = await running(cfg)
    for n in range(1, 6):
        gw.feed(_frame(n, 1), "test")
    await wait_for(lambda: gw.metrics.published_readings.total() == 5, what="published")
    bodies = [await _http(gw.http_port, f"GET {p} HTTP/1.1\r\n\r\n") for p in ("/metrics", "/api/status", "/")]
    post = await _http(gw.http_port, "POST /api/status HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert post.startswith(b"HTTP/1.1 405")
    assert _listening_addresses(gw.http_port) == {"127.0.0.1"}
    db = cfg.outbox_path
    with sqlite3.connect(db) as c:  # every table's cells, as the file's bytes may be compressed
        dump = "\n".join(c.iterdump()).encode()
    files = b"".join(p.read_bytes() for p in cfg.data_dir.iterdir() if p.is_file())
    for key in KEYS.values():
        for blob in (*bodies, dump, files):
            assert key not in blob and key.hex().encode() not in blob


def _listening_addresses(port: int) -> set[str]:
    """IPv4 and IPv6 addresses a TCP socket listens on at ``port`` (from /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, _, port_hex = local.partition(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                found.add(".".join(str(b) for b in raw[::-1]) if len(raw) == 4 else raw.hex())
    return found


async def _http(port: int, request: str) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(request.encode())
        await w.drain()
        return await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()


async def test_the_mqtt_password_is_never_logged_or_served(
    tmp_path: Path, mqtt_broker_auth: Any, running: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Read from its 0600 file at start, sent to the broker only: not in a log line (paho's
    included, at DEBUG), not on the status page or in the metrics."""
    caplog.set_level(logging.DEBUG)
    pw = tmp_path / "mqtt.password"
    pw.write_text(mqtt_broker_auth.password + "\n")
    pw.chmod(0o600)
    cfg = make_config(tmp_path, mqtt_broker_auth, mqtt__username=mqtt_broker_auth.username,
                      mqtt__password_file=pw)
    gw = await running(cfg)
    gw.feed(_frame(1, 1), "test")
    await wait_for(lambda: gw.metrics.published_readings.total() == 1, what="published with auth")
    bodies = [await _http(gw.http_port, f"GET {p} HTTP/1.1\r\n\r\n") for p in ("/metrics", "/api/status")]
    secret = mqtt_broker_auth.password
    assert secret not in caplog.text and all(secret.encode() not in b for b in bodies)
    assert secret not in repr(cfg) and secret not in repr(cfg.mqtt)



async def test_no_node_key_is_published(tmp_path: Path, mqtt_broker: Any, running: Any) -> None:
    """Every message the gateway publishes (readings, birth, events) while it loads the
    registry, verifies frames and rejects a forged one (logs: test_gw_pipeline.py)."""
    sub = Subscriber(mqtt_broker).start()
    await asyncio.wait_for(sub.ready.wait(), 10)
    try:
        gw = await running(make_config(tmp_path, mqtt_broker))
        for n in range(1, 6):
            gw.feed(_frame(n, 1), "test")
        gw.feed(_frame(1, 2, key=bytes(16)), "test")  # under another key: rejected
        await wait_for(lambda: len(sub.frames) == 5 and gw.metrics.rejections.get("bad_mic") == 1,
                       what="published and rejected")
        sent = b"".join(bytes(m.payload) for m in sub.messages if isinstance(m.payload, bytes | bytearray))
        assert sent
        for key in KEYS.values():
            assert key not in sent and key.hex().encode() not in sent
    finally:
        await sub.stop()


async def test_the_status_port_reads_a_bounded_request(tmp_path: Path, mqtt_broker: Any, running: Any) -> None:
    """A request head over 8 KiB is dropped unanswered (the server stops reading it there);
    one just under that is answered."""
    gw = await running(make_config(tmp_path, mqtt_broker))
    pad = "GET /api/status HTTP/1.1\r\nX-Pad: {}\r\n\r\n"
    assert (await _http(gw.http_port, pad.format("a" * 8000))).startswith(b"HTTP/1.1 200")
    try:
        answer = await _http(gw.http_port, pad.format("a" * 9000))
    except ConnectionResetError:  # closed with our bytes unread: no answer either
        answer = b""
    assert answer == b""
