"""The collector: packs off the bus into a database, each reading once, acked after commit."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from collector.app import Collector
from collector.config import CollectorConfig, CollectorConfigError, SourceConfig, config_from_dict
from collector.decode import Poison, decode
from collector.store import open_store
from urbansense.wire.senml import FrameRecord, encode_pack

pytestmark = pytest.mark.timeout(120)


def pack(frames: list[tuple[int, int]], t: float = 1_700_000_000.0, rssi: int | None = -70) -> bytes:
    """A gateway's pack: (node, fcnt) frames of a water meter (volume, alarms, battery)."""
    return encode_pack([FrameRecord(n, f, 1, {3: 1000 + f, 4: 0, 5: 3600}, t + f, rssi)
                        for n, f in frames])


async def wait_for(pred: Any, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- decoding outside bytes ------------------------------------------------------------------

@given(st.binary(max_size=200), st.sampled_from(["urbansense/v1/s/g/up", "urbansense.v1.s.g.status",
                                                 "urbansense/v1/s/g/event", "x/y", "urbansense.v1.s.g.up"]))
@settings(max_examples=300, deadline=None)
def test_decode_never_raises_anything_but_poison(data: bytes, topic: str) -> None:
    try:
        decode(topic, data)
    except Poison as exc:
        assert exc.reason in ("bad_topic", "bad_pack", "bad_json")


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**1100, 2**1100), st.floats(), st.text(max_size=40),
                    st.binary(max_size=8))
_RECORD = st.dictionaries(st.sampled_from([-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 99, "n"]),
                          _VALUES, max_size=6)


@given(st.lists(st.one_of(_RECORD, _VALUES), max_size=8))
@settings(max_examples=500, deadline=None)
def test_cbor_that_looks_like_senml_is_a_counted_poison_or_readings(records: list[Any]) -> None:
    """Well-formed CBOR in SenML's shape but not ours: refused as Poison, never another error."""
    import cbor2

    for rec in records:  # a base name that parses, now and then
        if isinstance(rec, dict) and -2 in rec and rec[-2] is None:
            rec[-2] = "urn:dev:org:32473-0000002a:"
    try:
        got = decode("urbansense/v1/s/g/up", cbor2.dumps(records))
    except Poison as exc:
        assert exc.reason == "bad_pack"
    else:
        assert isinstance(got, list)


def test_a_bignum_time_or_value_is_poison_not_an_overflow() -> None:
    """bt = 10**400 (a CBOR bignum) once raised OverflowError out of float()."""
    import cbor2

    bn = "urn:dev:org:32473-0000002a:"
    for pack_ in ([{-2: bn, -3: 10**400, 0: "fcnt", 2: 1}],
                  [{-2: bn, -3: 1.0, 0: "fcnt", 2: 1}, {0: "volume", 1: "m3", 2: 10**400}]):
        with pytest.raises(Poison) as exc:
            decode("urbansense/v1/s/g/up", cbor2.dumps(pack_))
        assert exc.value.reason == "bad_pack"


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=20))
@settings(max_examples=100, deadline=None)
def test_every_frame_of_a_pack_is_one_reading(frames: list[tuple[int, int]]) -> None:
    got = decode("urbansense/v1/angers/gw1/up", pack(frames, rssi=None))
    assert isinstance(got, list)
    assert [(r.node_id, r.fcnt) for r in got] == frames
    assert all(r.site == "angers" and r.gateway_id == "gw1" for r in got)


@given(st.dictionaries(st.text(max_size=12), st.one_of(
    st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=5), st.none()), max_size=6))
@settings(max_examples=300, deadline=None)
def test_the_fast_vals_json_writes_what_the_json_encoder_writes(values: dict[str, Any]) -> None:
    from collector.rows import _DUMPS, vals_json

    assert vals_json(values) == _DUMPS(values)


def test_fill_is_stored_as_a_ratio_whichever_unit_the_pack_uses() -> None:
    got = decode("urbansense/v1/s/g/up", encode_pack([FrameRecord(1, 1, 1, {2: 55}, 1.0)]))
    assert isinstance(got, list) and got[0].column("fill_ratio") == pytest.approx(0.55)


def test_a_config_with_an_unknown_source_kind_is_refused() -> None:
    with pytest.raises(CollectorConfigError) as exc:
        config_from_dict({"source": {"kind": "kafka"}})
    assert exc.value.key == "source.kind"


# -- one site: MQTT into SQLite ---------------------------------------------------------------

def _publish(port: int, items: list[tuple[str, bytes]], client_id: str = "gw-test") -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for topic, data in items:
            c.publish(topic, data, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


async def test_a_frame_heard_by_two_gateways_is_stored_once_with_both_receptions(
        mqtt_broker: Any, tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    cfg = CollectorConfig(collector_id="c1", source=SourceConfig(kind="mqtt", port=mqtt_broker.port),
                          store_url=f"sqlite:///{db}", http_port=0)
    col = Collector(cfg)
    task = asyncio.create_task(col.run())
    try:
        await asyncio.wait_for(col.started.wait(), 20)
        frames = [(7, i) for i in range(1, 11)]
        await asyncio.to_thread(_publish, mqtt_broker.port, [
            ("urbansense/v1/angers/gw1/up", pack(frames, rssi=-60)),
            ("urbansense/v1/angers/gw2/up", pack(frames[5:], rssi=-80)),
            ("urbansense/v1/angers/gw1/up", b"\xff not cbor"),
            ("urbansense/v1/angers/gw1/status", b'{"state": "online", "gateway": "gw1"}'),
        ])
        await wait_for(lambda: col.metrics.acked.total() >= 3 and col.metrics.dead_letters.total() == 1)
    finally:
        await col.stop()
        await task
    assert _rows(db, "SELECT COUNT(*), COUNT(DISTINCT fcnt) FROM readings") == [(10, 10)]
    assert _rows(db, "SELECT gateway_id, rssi_dbm FROM receptions WHERE fcnt = 8 ORDER BY 1") == [
        ("gw1", -60.0), ("gw2", -80.0)]
    assert _rows(db, "SELECT gateway_id FROM v_node_heard_by ORDER BY 1") == [("gw1",), ("gw2",)]
    assert _rows(db, "SELECT last_fcnt, volume_m3 FROM node_state") == [(10, pytest.approx(1.01))]
    assert _rows(db, "SELECT gateway_id, online FROM gateway_status") == [("gw1", 1)]
    assert col.metrics.stored.total() == 10 and col.metrics.duplicates.total() == 5
    assert col.metrics.dead_letters.get("bad_pack") == 1


# -- the city: JetStream into PostgreSQL -------------------------------------------------------

def _city_cfg(cluster: Any, pg: Any, name: str, **kw: Any) -> CollectorConfig:
    return CollectorConfig(collector_id=name, source=SourceConfig(
        kind="jetstream", servers=cluster.urls, ack_wait_s=kw.pop("ack_wait_s", 5.0)),
        store_url=pg.dsn, http_port=0, max_messages=kw.pop("max_messages", 64),
        fetch_timeout_s=0.2)


async def _nats_publish(cluster: Any, items: list[tuple[str, bytes]]) -> None:
    import nats

    nc = await nats.connect(servers=cluster.urls)
    try:
        js = nc.jetstream(timeout=10)
        for subject, data in items:
            for _ in range(100):
                try:
                    await js.publish(subject, data)
                    break
                # A new stream's leader may still be electing; on a loaded machine the ack may
                # time out (a second copy of a message is stored once all the same).
                except (nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("no stream took the message")
    finally:
        await nc.close()


async def test_two_collectors_share_one_durable_consumer_and_poison_is_dead_lettered(
        nats_cluster: Any, pg_server: Any) -> None:
    import nats
    import psycopg

    cols = [Collector(_city_cfg(nats_cluster, pg_server, f"c{i}")) for i in range(2)]
    tasks = [asyncio.create_task(c.run()) for c in cols]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.started.wait() for c in cols)), 30)
        items = [(f"urbansense.v1.angers.gw{g}.up", pack([(n, f) for n in range(20)]))
                 for f in range(1, 51) for g in (1, 2)]
        items.append(("urbansense.v1.angers.gw1.up", b"\xa1\x00"))
        await _nats_publish(nats_cluster, items)
        await wait_for(lambda: sum(c.metrics.acked.total() + c.metrics.dead_letters.total()
                                   for c in cols) >= len(items))
    finally:
        for c in cols:
            await c.stop()
        await asyncio.gather(*tasks)
    assert all(c.metrics.acked.total() > 0 for c in cols), "both collectors took work"
    assert sum(c.metrics.stored.total() for c in cols) == 1000
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone() == (1000,)
        assert conn.execute("SELECT COUNT(*) FROM receptions").fetchone() == (2000,)
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        sub = await nc.jetstream().pull_subscribe("urbansense.deadletter.>", "t", stream="URBANSENSE_DEADLETTER")
        (dead,) = await sub.fetch(1, timeout=5)
        assert dead.data == b"\xa1\x00" and dead.headers and dead.headers["Urbansense-Reason"] == "bad_pack"
    finally:
        await nc.close()


async def test_a_batch_waits_while_the_database_is_down_and_is_stored_once_after(
        nats_cluster: Any, pg_server: Any) -> None:
    import psycopg

    col = Collector(_city_cfg(nats_cluster, pg_server, "c1", ack_wait_s=2.0))
    task = asyncio.create_task(col.run())
    try:
        await asyncio.wait_for(col.started.wait(), 30)
        await _nats_publish(nats_cluster, [("urbansense.v1.a.gw1.up", pack([(1, f)])) for f in range(1, 11)])
        await wait_for(lambda: col.metrics.acked.total() == 10)
        await asyncio.to_thread(pg_server.stop)
        # One message: all of it is the batch in hand (messages the client had queued behind
        # it would be redelivered after ack_wait_s, which the keys absorb, but that is
        # not what this test looks at).
        await _nats_publish(nats_cluster, [("urbansense.v1.a.gw1.up", pack([(1, f) for f in range(11, 21)]))])
        await wait_for(lambda: col.metrics.store_errors.get("unavailable") >= 2)
        assert col.status()["store"]["ok"] is False
        # Seven retries back off 0.1 + 0.2 + 0.4 + 4 x 0.67 s (a third of ack_wait_s), well past
        # ack_wait_s (2 s): only "in progress" keeps the batch from being redelivered meanwhile.
        await wait_for(lambda: col.metrics.store_errors.get("unavailable") >= 8)
        await asyncio.to_thread(pg_server.start)
        await wait_for(lambda: col.metrics.stored.total() == 20)
    finally:
        await col.stop()
        await task
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT COUNT(*), MAX(fcnt) FROM readings").fetchone() == (20, 20)
    assert col.metrics.duplicates.total() == 0


def test_the_views_answer_on_postgres_as_on_sqlite(pg_server: Any, tmp_path: Path) -> None:
    from collector.decode import decode as dec
    from collector.rows import build

    readings = dec("urbansense/v1/a/gw1/up", encode_pack([
        FrameRecord(1, 1, 1, {0: True}, 1_700_000_000.0),
        FrameRecord(2, 1, 1, {2: 90}, 1_700_000_000.0),
        FrameRecord(3, 1, 1, {3: 1000, 4: 1}, 1_700_000_000.0),
        FrameRecord(3, 2, 1, {3: 1500, 4: 1}, 1_700_086_400.0),
    ]))
    assert isinstance(readings, list)
    rows = build(readings, [], 1_700_100_000.0)
    answers = []
    for url in (pg_server.dsn, f"sqlite:///{tmp_path / 'v.db'}"):
        store = open_store(url)
        assert store.commit(rows) == 4
        conn: Any = store._connection() if store.dialect == "postgres" else store._conn  # type: ignore[attr-defined]
        q = {v: conn.execute(f"SELECT * FROM {v} ORDER BY 1, 2").fetchall() for v in (
            "v_occupancy_by_street", "v_bins_over_threshold", "v_water_daily", "v_open_alarms")}
        store.close()
        answers.append(json.loads(json.dumps(q, default=str).replace("true", "1")))
    pg, lite = answers
    assert pg == lite
    assert pg["v_water_daily"] == [[3, "2023-11-14", 1.0, 0.0], [3, "2023-11-15", 1.5, 0.5]]
    assert pg["v_open_alarms"] == [[3, "leak", 1_700_086_400.0, 1_700_000_000.0]]
    assert pg["v_bins_over_threshold"] == [[2, None, None, 0.9, 1_700_000_000.0]]


def test_the_example_config_loads() -> None:
    from collector.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "examples" / "collector.toml")
    assert cfg.source.kind == "jetstream" and len(cfg.source.servers) == 3
    assert cfg.store_url.startswith("postgresql://")


async def test_status_and_metrics_are_served_on_the_http_port(
        mqtt_broker: Any, tmp_path: Path, capsys: Any) -> None:
    import urllib.request

    from urbansense.cli import main

    cfg = CollectorConfig(collector_id="c-status", source=SourceConfig(kind="mqtt", port=mqtt_broker.port),
                          store_url=f"sqlite:///{tmp_path / 's.db'}", http_port=0)
    col = Collector(cfg)
    task = asyncio.create_task(col.run())
    try:
        await asyncio.wait_for(col.started.wait(), 20)
        await asyncio.to_thread(_publish, mqtt_broker.port, [
            ("urbansense/v1/a/gw1/up", pack([(3, 1), (3, 2)])), ("urbansense/v1/a/gw1/up", b"junk")])
        await wait_for(lambda: col.metrics.stored.total() == 2 and col.metrics.dead_letters.total() == 1)
        url = f"http://127.0.0.1:{col.http_port}"
        rc = await asyncio.to_thread(main, ["collector", "status", "--url", url])

        def get_metrics() -> str:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
                return str(resp.read().decode())

        metrics = await asyncio.to_thread(get_metrics)
    finally:
        await col.stop()
        await task
    assert rc == 0
    out = capsys.readouterr().out
    assert "collector c-status" in out and "stored 2" in out and "sqlite ok" in out
    assert "urbansense_collector_readings_stored_total 2" in metrics
    assert 'urbansense_collector_dead_letters_total{reason="bad_pack"} 1' in metrics
