"""Gateway stages in isolation: rejections, outbox bounds and recovery, config, registry, HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.config_toml import config_from_dict, load_config
from gateway.errors import ConfigError
from gateway.flow import Accepted, Duplicate, Heard, NodeRow
from gateway.metrics import REJECT_REASONS, Metrics
from gateway.outbox import PRIORITY_ALARM, PRIORITY_ORDINARY, Outbox
from gateway.registry import NodeSpec, Registry, load_registry, write_registry
from gateway.replay import WINDOW, Freshness, ReplayTable, judge, mark_seen
from gateway.verify import Verifier
from tests.test_gw_support import KEYS, PtyNode, frame, make_config, wait_for
from urbansense.wire import framing
from urbansense.wire.protocol import REASONS

ROOT = Path(__file__).resolve().parents[1]

# node 1, fcnt 1, {battery_mv: 3600, events: 1}, key KEYS[1]
GOOD = bytes.fromhex("10010000000100d2264937ff482d8ddb15f5")
# node 1, fcnt 2, a valid MIC over a body that decrypts to CBOR 1 (not a map)
NOT_A_MAP = bytes.fromhex("1001000000020027aa884777")


def _verifier(nodes: range = range(1, 4)) -> Verifier:
    reg = Registry()
    reg = load_registry_from({n: KEYS[n] for n in nodes})
    return Verifier(reg, ReplayTable(), Metrics())


def load_registry_from(keys: dict[int, bytes]) -> Registry:
    from gateway.registry import Node
    from urbansense.wire.protocol import NodeKeys

    return Registry(Node(n, "water", NodeKeys(k)) for n, k in keys.items())


def test_golden_literal_still_verifies() -> None:
    assert GOOD == frame(1, 1)
    v = _verifier().process(Heard(GOOD, "t"))
    assert isinstance(v, Accepted) and v.record.readings == {5: 3600, 11: 1}


@pytest.mark.parametrize(
    ("reason", "data", "wrapped"),
    [
        ("bad_cobs", b"\x05\x01", True),  # block claims 4 more bytes than there are
        ("bad_cobs", b"\x02\x01\x00\x01", True),  # a delimiter inside the packet
        ("bad_crc", framing.wrap(GOOD)[:-3] + b"\x55\x55", True),  # wrong CRC bytes
        ("too_short", b"\x10\x01\x00\x00\x00", False),
        ("too_long", b"\x10" + b"\x01" * 64, False),
        ("unknown_version", b"\x20" + GOOD[1:], False),  # version 2 nibble
        ("unknown_type", b"\x13" + GOOD[1:], False),  # reserved type 3
        ("unknown_node", b"\x10\x63\x00\x00\x00" + GOOD[5:], False),  # node 0x63 not provisioned
        ("bad_mic", GOOD[:-1] + bytes((GOOD[-1] ^ 1,)), False),  # one MIC bit flipped
        ("malformed_body", NOT_A_MAP, False),
    ],
)
def test_every_rejection_counted(reason: str, data: bytes, wrapped: bool) -> None:
    """Each reason is counted once, nothing raises, nothing else is counted."""
    v = _verifier()
    assert v.process(Heard(data, "serial", wrapped=wrapped)) is None
    assert v.metrics.rejections.get(reason) == 1
    assert v.metrics.rejections.total() == 1


def test_replay_window_duplicate_late_and_replay() -> None:
    v = _verifier()
    assert isinstance(v.process(Heard(frame(1, 100), "t")), Accepted)
    assert isinstance(v.process(Heard(frame(1, 100), "t")), Duplicate)  # heard again
    late = v.process(Heard(frame(1, 98), "t"))  # lost before 100 got through: inside the window
    assert isinstance(late, Accepted) and late.record.fcnt == 98
    assert isinstance(v.process(Heard(frame(1, 98), "t")), Duplicate)
    assert isinstance(v.process(Heard(frame(1, 100 - WINDOW), "t")), Accepted)  # window's edge
    assert v.process(Heard(frame(1, 99 - WINDOW), "t")) is None  # below the window
    assert v.metrics.rejections.get("replay") == 1
    assert v.metrics.duplicates.total() == 2 and v.metrics.late_frames.total() == 2
    assert set(v.metrics.rejections.values) >= set(REASONS)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=80))
def test_replay_window_matches_a_set_model(counters: list[int]) -> None:
    """Against the obvious model (every counter ever accepted kept in a set): a counter is
    accepted at most once, and refused only when accepted before or below the window."""
    mark: int | None = None
    seen = 0
    accepted: set[int] = set()
    for f in counters:
        verdict = judge(mark, seen, f)
        top = max(accepted, default=None)
        if top is not None and f < top - WINDOW:
            assert verdict is Freshness.REPLAY
        elif f in accepted:
            assert verdict is Freshness.DUPLICATE
        else:
            assert verdict is (Freshness.NEW if top is None or f > top else Freshness.LATE)
            accepted.add(f)
            mark, seen = mark_seen(mark, seen, f)
        assert mark == top or mark == max(accepted)
        assert 0 <= seen < 1 << WINDOW


def test_committed_window_persists_and_survives_old_schema(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 1 << 20)
    st_ = ReplayTable().get(7)
    for f in (10, 12, 13):
        assert st_.admit(f) is Freshness.NEW
    mark, seen = st_.commit([10, 12, 13])
    ob.commit_batch(b"x", 3, 0, [st_.row(7, mark, seen, 0)])
    ob.close()
    back = ReplayTable(Outbox(tmp_path / "o.db", 1 << 20).load_nodes()).get(7)
    assert [back.judge(f) for f in (13, 12, 11, 10)] == [
        Freshness.DUPLICATE, Freshness.DUPLICATE, Freshness.LATE, Freshness.DUPLICATE]
    # An outbox written before the window existed (column "recent"): strict marks.
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("CREATE TABLE nodes (node_id INTEGER PRIMARY KEY, fcnt INTEGER NOT NULL, "
                     "dcnt INTEGER NOT NULL, recent BLOB NOT NULL);"
                     "INSERT INTO nodes VALUES (7, 50, 2, x'');")
    db.close()
    old = ReplayTable(Outbox(tmp_path / "old.db", 1 << 20).load_nodes()).get(7)
    assert old.judge(49) is Freshness.DUPLICATE and old.judge(51) is Freshness.NEW and old.dcnt == 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_serial_bytes_are_rejected_and_counted_and_a_good_frame_still_lands(
    chunks: list[bytes],
) -> None:
    """Garbage is rejected with a reason from REJECT_REASONS, each frame counted once, no verify bug
    logged, and a good frame after the garbage is accepted (the stream resynchronises)."""
    v = _verifier()
    splitter = framing.PacketSplitter()
    verdicts = []
    with _capture("gateway.verify") as records:
        for chunk in chunks:
            for packet in splitter.feed(chunk):
                verdicts.append(v.process(Heard(packet, "serial", wrapped=True)))
            verdicts.append(v.process(Heard(chunk, "ble")))
        for packet in splitter.feed(b"\x00" + framing.wrap(GOOD)):
            verdicts.append(v.process(Heard(packet, "serial", wrapped=True)))
    m = v.metrics
    assert not [r for r in records if "verify_bug" in r.getMessage()] and m.internal_errors.total() == 0
    assert m.frames_in.total() == len(verdicts)
    assert {r for r, n in m.rejections.values.items() if n} <= set(REJECT_REASONS)
    accepted = [x for x in verdicts if isinstance(x, Accepted)]
    assert m.rejections.total() + m.frames_accepted.total() + m.duplicates.total() == len(verdicts)
    assert m.rejections.total() == verdicts.count(None)
    assert accepted and (accepted[-1].record.node_id, accepted[-1].record.fcnt) == (1, 1)


@contextlib.contextmanager
def _capture(name: str) -> Iterator[list[logging.LogRecord]]:
    """Records of one logger (hypothesis runs many examples per test: no caplog fixture)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


async def test_garbage_on_a_pty_then_a_good_frame(tmp_path: Path, mqtt_broker: Any) -> None:
    node = PtyNode()
    gw = Gateway(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    task = asyncio.create_task(gw.run())
    await asyncio.wait_for(gw.started.wait(), 5)
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    node.send_raw(bytes(range(256)) * 3 + b"\xff" * 600 + b"\x00\x00\x02\x00" + os.urandom(500))
    node.send_raw(b"\x00")
    node.send(frame(2, 1))
    await wait_for(lambda: node.acks, what="ack after garbage")
    assert gw.metrics.rejections.total() > 0 and not task.done()
    await gw.stop()
    await task
    node.close()


# -- outbox -------------------------------------------------------------------------------


def test_outbox_full_drops_oldest_ordinary_first(tmp_path: Path) -> None:
    m = Metrics()
    ob = Outbox(tmp_path / "o.db", max_bytes=1000, metrics=m)
    alarm = ob.commit_batch(b"A" * 300, 3, PRIORITY_ALARM)
    ids = [ob.commit_batch(bytes([i]) * 300, 5, PRIORITY_ORDINARY) for i in range(5)]
    assert ob.bytes <= 1000
    left = ob.pending_ids()
    assert alarm in left and ids[-1] in left and ids[0] not in left
    # Each 300 B pack takes 341 B of database (stored_bytes): 6 offered, 2 fit in 1000 B.
    assert m.outbox_dropped_batches.get("ordinary") == 4
    assert m.outbox_dropped_readings.total() == 20
    for b in ob.peek(0, 10):  # broker back: space returns
        ob.ack(b.batch_id)
    ob.flush_acks()
    assert ob.depth == 0 and ob.bytes == 0
    ob.commit_batch(b"x" * 900, 1, PRIORITY_ORDINARY)
    assert m.outbox_dropped_batches.total() == 4
    ob.close()


def test_outbox_persists_and_skips_corrupt_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 10**6)
    a = ob.commit_batch(b"first", 1, 0, [NodeRow(7, 42, 3, b"")])
    b = ob.commit_batch(b"second", 1, 0)
    ob.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE batches SET payload=? WHERE id=?", (b"tampered", a))
    db.commit()
    db.close()
    m = Metrics()
    ob2 = Outbox(path, 10**6, m)
    assert [x.batch_id for x in ob2.peek(0, 10)] == [b]
    assert m.outbox_corrupt.total() == 1
    assert ob2.load_nodes() == [NodeRow(7, 42, 3, b"")]
    ob2.close()


def test_outbox_unreadable_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite" * 100)
    m = Metrics()
    ob = Outbox(path, 10**6, m)
    assert m.outbox_corrupt.total() == 1 and ob.depth == 0
    ob.commit_batch(b"x", 1, 0)
    ob.close()
    assert list(tmp_path.glob("o.db.corrupt-*"))


def test_replay_state_survives_restart(tmp_path: Path, mqtt_broker: Any) -> None:
    async def once(frames: list[bytes]) -> Metrics:
        gw = Gateway(make_config(tmp_path, mqtt_broker))
        task = asyncio.create_task(gw.run())
        await gw.started.wait()
        for f in frames:
            gw.feed(f, "t")
        await gw.stop()
        await task
        return gw.metrics

    m1 = asyncio.run(once([frame(1, 1), frame(1, 100)]))
    assert m1.readings_committed.total() == 2
    # After the restart: 100 is a duplicate, 1 fell out of the window, 50 was never heard.
    m2 = asyncio.run(once([frame(1, 100), frame(1, 1), frame(1, 50), frame(1, 50)]))
    assert m2.readings_committed.total() == 1
    assert m2.duplicates.total() == 2 and m2.rejections.get("replay") == 1


# -- config and registry ----------------------------------------------------------------------

BASE = {
    "gateway": {"site": "angers", "id": "gw-1", "registry": "nodes.jsonl", "data_dir": "data"},
    "mqtt": {"brokers": ["127.0.0.1:1883"]},
}


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"gateway": {"site": "Angers Centre"}}, "gateway.site"),
        ({"gateway": {"id": ""}}, "gateway.id"),
        ({"batch": {"max_records": 0}}, "batch.max_records"),
        ({"batch": {"max_age_s": "5"}}, "batch.max_age_s"),
        ({"batch": {"max_recods": 5}}, "batch.max_recods"),
        ({"mqtt": {"brokers": ["nohost"]}}, "mqtt.brokers[0]"),
        ({"mqtt": {"brokers": []}}, "mqtt.brokers"),
        ({"mqtt": {"protocol": "4"}}, "mqtt.protocol"),
        ({"outbox": {"max_bytes": 10}}, "outbox.max_bytes"),
        ({"ble": {"enabled": True, "backend": "datagram"}}, "ble.datagram_socket"),
        ({"ble": {"company_id": 70000}}, "ble.company_id"),
        ({"serial": {"ports": "/dev/ttyUSB0"}}, "serial.ports"),
        ({"http": {"port": 70000}}, "http.port"),
        ({"bogus": 1}, "bogus"),
        ({"outbox": {"ack_flush_s": 0}}, "outbox.ack_flush_s"),
        ({"serial": {"retry_min_s": 0}}, "serial.retry_min_s"),
        ({"serial": {"retry_min_s": 5.0, "retry_max_s": 1.0}}, "serial.retry_max_s"),
        ({"serial": {"baudrate": 0}}, "serial.baudrate"),
        ({"health": {"default_interval_s": 0}}, "health.default_interval_s"),
        ({"health": {"silent_factor": 0.5}}, "health.silent_factor"),
        ({"health": {"low_battery_mv": -1}}, "health.low_battery_mv"),
        ({"health": {"check_interval_s": 0}}, "health.check_interval_s"),
        ({"mqtt": {"keepalive_s": 0}}, "mqtt.keepalive_s"),
        ({"mqtt": {"keepalive_s": 70000}}, "mqtt.keepalive_s"),
        ({"mqtt": {"publish_timeout_s": 0}}, "mqtt.publish_timeout_s"),
        ({"mqtt": {"connect_timeout_s": -1}}, "mqtt.connect_timeout_s"),
        ({"mqtt": {"cert_file": "gw.crt", "key_file": "gw.key"}}, "mqtt.cert_file"),
        ({"mqtt": {"tls": True, "key_file": "gw.key"}}, "mqtt.key_file"),
    ],
)
def test_config_errors_name_the_key(patch: dict[str, Any], key: str, tmp_path: Path) -> None:
    raw = json.loads(json.dumps(BASE))
    for section, values in patch.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    with pytest.raises(ConfigError) as exc:
        config_from_dict(raw, tmp_path)
    assert exc.value.key == key


def test_example_config_loads() -> None:
    cfg = load_config(ROOT / "examples" / "gateway.toml")
    assert cfg.topic_prefix.startswith("urbansense/v1/")


def test_registry_files_private_and_world_readable_refused(tmp_path: Path) -> None:
    specs = [NodeSpec(1, "parking", KEYS[1]), NodeSpec(2, "bin", KEYS[2], 600.0)]
    assert "key=<redacted>" in repr(specs[0])
    write_registry(tmp_path / "inline.jsonl", specs)
    write_registry(tmp_path / "files.jsonl", specs, key_dir=tmp_path / "keys")
    for p in [tmp_path / "inline.jsonl", *sorted((tmp_path / "keys").iterdir())]:
        assert p.stat().st_mode & 0o777 == 0o600
    reg = load_registry(tmp_path / "files.jsonl")
    assert len(reg) == 2 and KEYS[1].hex() not in repr(reg.nodes())
    (tmp_path / "keys" / "00000001.key").chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        load_registry(tmp_path / "files.jsonl")
    assert exc.value.key == "gateway.registry:2.key_file"
    (tmp_path / "inline.jsonl").chmod(0o644)
    with pytest.raises(ConfigError):
        load_registry(tmp_path / "inline.jsonl")


def test_world_readable_password_refused(tmp_path: Path, mqtt_broker: Any) -> None:
    pw = tmp_path / "pw"
    pw.write_text("x")
    pw.chmod(0o644)
    cfg = make_config(tmp_path, mqtt_broker, mqtt__username="u", mqtt__password_file=pw)

    with pytest.raises(ConfigError) as exc:
        Gateway(cfg)
    assert exc.value.key == "mqtt.password_file"


# -- HTTP: metrics, status JSON, page, CLI ---------------------------------------------------------


async def _get(port: int, path: str) -> tuple[str, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body


async def test_metrics_status_and_cli(tmp_path: Path, mqtt_broker: Any) -> None:
    gw = Gateway(make_config(tmp_path, mqtt_broker))
    task = asyncio.create_task(gw.run())
    await gw.started.wait()
    gw.feed(frame(1, 1), "test")
    gw.feed(b"\x20junk-junk-junk", "test")
    await wait_for(lambda: gw.metrics.published_readings.total() == 1, what="published")
    head, body = await _get(gw.http_port, "/metrics")
    text = body.decode()
    assert "200 OK" in head
    for name in ('urbansense_gateway_frames_in_total{transport="test"} 2',
                 'urbansense_gateway_rejections_total{reason="unknown_version"} 1',
                 "urbansense_gateway_broker_connected 1", "urbansense_gateway_outbox_bytes",
                 "urbansense_gateway_publish_latency_seconds_bucket",
                 "urbansense_gateway_disk_bytes_per_reading"):
        assert name in text, name
    _, body = await _get(gw.http_port, "/api/status")
    status = json.loads(body)
    assert status["nodes"][0]["node_id"] == 1 and status["broker"]["connected"]
    head, body = await _get(gw.http_port, "/")
    assert b"<canvas" in body and b"/api/status" in body and b"http" not in body.split(b"<script>")[1][:0]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "urbansense", "gateway", "status", "--url",
        f"http://127.0.0.1:{gw.http_port}", stdout=subprocess.PIPE, cwd=ROOT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and b"broker    connected" in out
    await gw.stop()
    await task
    assert cbor2  # imported for symmetry with other tests


def test_silent_node_raises_one_event_then_back_when_heard() -> None:
    from gateway.config import HealthConfig
    from gateway.health import Health
    from gateway.registry import Node
    from urbansense.wire.protocol import NodeKeys
    from urbansense.wire.senml import FrameRecord

    events: list[dict[str, Any]] = []
    reg = Registry([Node(1, "bin", NodeKeys(KEYS[1]), report_interval_s=900.0),
                    Node(2, "water", NodeKeys(KEYS[2]))])
    health = Health(HealthConfig(default_interval_s=3600.0, silent_factor=2.0), reg, events.append)
    for node in (1, 2):
        health.observe(FrameRecord(node, 1, 0, {5: 3600}, received_s=1000.0), "bin")
    health.check_silent(now_s=1000.0 + 2 * 900 - 1)
    assert events == []
    health.check_silent(now_s=1000.0 + 2 * 900 + 1)  # past 2 x 900 s for node 1 only
    health.check_silent(now_s=1000.0 + 2 * 900 + 2)  # raised once, not on every check
    assert [(e["event"], e["node_id"], e["expected_interval_s"]) for e in events] == [("silent", 1, 900.0)]
    health.check_silent(now_s=1000.0 + 2 * 3600 + 1)  # node 2 on the default interval
    assert [e["node_id"] for e in events] == [1, 2]
    health.observe(FrameRecord(1, 2, 0, {5: 3600}, received_s=9000.0), "bin")
    assert events[-1]["event"] == "back" and events[-1]["node_id"] == 1
    assert health.nodes[1].silent is False and health.nodes[2].silent is True


def test_faults_from_outside_log_once_loudly_then_a_bounded_summary(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from gateway import ratelog

    clock = [100.0]
    monkeypatch.setattr(ratelog.time, "monotonic", lambda: clock[0])
    log = ratelog.RateLimitedLog(logging.getLogger("test.ratelog"), interval_s=60.0)
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        for i in range(10_000):  # a street of foreign beacons over ten minutes
            clock[0] = 100.0 + i * 0.06
            log.log("bad_mic", "event=rejected reason=bad_mic n=%d", i)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    summaries = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1 and "first occurrence" in warnings[0].getMessage()
    assert 9 <= len(summaries) <= 10  # one per 60 s over 600 s
    assert sum(int(r.getMessage().split("count=")[1].split()[0]) for r in summaries) <= 9_999


def test_config_errors_say_what_is_wrong(tmp_path: Path) -> None:
    raw = json.loads(json.dumps(BASE))
    raw["serial"] = {"retry_min_s": 0}
    with pytest.raises(ConfigError) as exc:
        config_from_dict(raw, tmp_path)
    assert str(exc.value).startswith("serial.retry_min_s: must be > 0")
    raw["serial"] = {}
    raw["mqtt"]["cert_file"] = "gw.crt"
    with pytest.raises(ConfigError) as exc:
        config_from_dict(raw, tmp_path)
    assert "mqtt.tls" in exc.value.problem
    raw["mqtt"].update(tls=True, key_file="gw.key", keepalive_s=60)
    raw["outbox"] = {"ack_flush_s": 5.0}
    cfg = config_from_dict(raw, tmp_path)
    assert cfg.outbox.ack_flush_s == 5.0 and cfg.mqtt.tls


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o620])
def test_secret_files_with_group_or_world_bits_refused(tmp_path: Path, mode: int) -> None:
    """The registry, key files, the MQTT password and TLS key: 0600/0400 only."""
    write_registry(tmp_path / "inline.jsonl", [NodeSpec(1, "parking", KEYS[1])])
    write_registry(tmp_path / "files.jsonl", [NodeSpec(1, "parking", KEYS[1])],
                   key_dir=tmp_path / "keys")
    secrets = {"pw": tmp_path / "pw", "key": tmp_path / "gw.key"}
    for p in secrets.values():
        p.write_text("secret")
        p.chmod(0o600)
    raw = json.loads(json.dumps(BASE))
    raw["mqtt"].update(username="u", password_file="pw", tls=True, cert_file="gw.crt",
                       key_file="gw.key")
    config_from_dict(raw, tmp_path)  # 0600: fine
    load_registry(tmp_path / "inline.jsonl")
    load_registry(tmp_path / "files.jsonl")
    for path, key in [(secrets["pw"], "mqtt.password_file"), (secrets["key"], "mqtt.key_file")]:
        path.chmod(mode)
        with pytest.raises(ConfigError) as exc:
            config_from_dict(raw, tmp_path)
        assert exc.value.key == key and f"{mode:04o}" in exc.value.problem
        path.chmod(0o400)
    config_from_dict(raw, tmp_path)  # 0400: fine
    key_file = next((tmp_path / "keys").iterdir())
    key_file.chmod(mode)
    with pytest.raises(ConfigError) as exc:
        load_registry(tmp_path / "files.jsonl")
    assert exc.value.key == "gateway.registry:2.key_file"
    (tmp_path / "inline.jsonl").chmod(mode)
    with pytest.raises(ConfigError) as exc:
        load_registry(tmp_path / "inline.jsonl")
    assert exc.value.key == "gateway.registry"
