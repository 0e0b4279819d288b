"""The collector's batch path: duplicates inside a batch and across batches, two gateways in
one batch, concurrent collectors, node state by frame counter, a poison message inside a big
batch, and a crash between commit and acknowledgement (real PostgreSQL and NATS cluster)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.app import Collector
from collector.decode import COLUMNS, Reading, decode
from collector.rows import RECEPTION_COLUMNS, build
from collector.sources import JetStreamSource
from collector.store import open_store
from tests.test_collector import _city_cfg, _nats_publish, pack, wait_for
from urbansense.wire.senml import FrameRecord, encode_pack

pytestmark = pytest.mark.timeout(180)


def readings(gateway: str, frames: list[tuple[int, int]], rssi: int = -70) -> list[Reading]:
    got = decode(f"urbansense/v1/angers/{gateway}/up", pack(frames, rssi=rssi))
    assert isinstance(got, list)
    return got


def _count(store: Any, sql: str) -> Any:
    conn = store._connection() if store.dialect == "postgres" else store._conn
    return conn.execute(sql).fetchall()


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.sampled_from(["gw1", "gw2", "gw3"])),
                max_size=40))
@settings(max_examples=200, deadline=None)
def test_a_batch_has_one_reading_per_frame_one_reception_per_gateway_and_the_latest_state(
        heard: list[tuple[int, int, str]]) -> None:
    """build() against a plain reference: keys sorted, first copy kept, state from the highest fcnt."""
    rs = [r for n, f, gw in heard for r in readings(gw, [(n, f)])]
    rows = build(rs, [], 1.0)
    keys = sorted({(n, f) for n, f, _ in heard})
    assert [(r[0], r[1]) for r in rows.readings] == keys
    assert [r[:3] for r in rows.receptions] == sorted({(n, f, gw) for n, f, gw in heard})
    first_gw = {}
    for n, f, gw in heard:
        first_gw.setdefault((n, f), gw)
    assert [r[4] for r in rows.readings] == [first_gw[k] for k in keys]
    latest = {n: max(f for m, f, _ in heard if m == n) for n, _, _ in heard}
    assert [(s[0], s[2]) for s in rows.states] == sorted(latest.items())
    vol = COLUMNS.index("volume_m3")
    assert all(r[6 + vol] == pytest.approx((1000 + r[1]) / 1000) for r in rows.readings)


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_duplicates_inside_a_batch_and_across_batches_are_stored_once_with_every_reception(
        dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("pg_server").dsn if dialect == "postgres" else f"sqlite:///{tmp_path / 'd.db'}"
    store = open_store(url)
    try:
        # One batch: frames 1-4 from gw1, 3-6 from gw2 (two gateways), gw1's pack twice.
        first = readings("gw1", [(7, f) for f in range(1, 5)], -60)
        batch = [*first, *readings("gw2", [(7, f) for f in range(3, 7)], -80), *first]
        assert store.commit(build(batch, [], 1.0)) == 6
        # Next batch: a redelivery of gw2's pack beside new frames 7-8 from gw3.
        again = [*readings("gw2", [(7, f) for f in range(3, 7)], -80), *readings("gw3", [(7, 7), (7, 8)])]
        assert store.commit(build(again, [], 2.0)) == 2
        # The same batch again (a crash between commit and ack): nothing new at all.
        assert store.commit(build(again, [], 3.0)) == 0
        assert _count(store, "SELECT COUNT(*), MIN(fcnt), MAX(fcnt) FROM readings") == [(8, 1, 8)]
        assert _count(store, "SELECT gateway_id, COUNT(*) FROM receptions GROUP BY gateway_id ORDER BY 1") == [
            ("gw1", 4), ("gw2", 4), ("gw3", 2)]
        assert _count(store, "SELECT gateway_id, rssi_dbm FROM receptions WHERE fcnt = 4 ORDER BY 1") == [
            ("gw1", -60.0), ("gw2", -80.0)]
        assert _count(store, "SELECT gateway_id FROM readings WHERE fcnt = 4") == [("gw1",)]
        if dialect == "postgres":
            assert store.slow_receptions == 2  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_node_state_keeps_the_newest_frame_when_an_older_one_arrives_later(
        dialect: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("pg_server").dsn if dialect == "postgres" else f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url)

    def frame(fcnt: int, values: dict[int, int | bool], t: float) -> list[Reading]:
        got = decode("urbansense/v1/a/gw1/up", encode_pack([FrameRecord(9, fcnt, 1, values, t)]))
        assert isinstance(got, list)
        return got

    try:
        store.commit(build(frame(5, {2: 40}, 1_700_000_500.0), [], 1.0))  # fill 40 %, no battery
        store.commit(build(frame(3, {2: 90, 5: 3500}, 1_700_000_300.0), [], 2.0))  # older, late
        got = _count(store, "SELECT last_fcnt, last_seen_s, fill_ratio, battery_v FROM node_state")
        assert got == [(5, 1_700_000_500.0, pytest.approx(0.4), pytest.approx(3.5))]
    finally:
        store.close()


def test_a_reception_a_concurrent_transaction_inserts_first_is_stored_once(pg_server: Any) -> None:
    """Two collectors' transactions hold the same reception (a message redelivered to a second
    collector while the first still commits): the second waits, then stores it once."""
    import psycopg

    store = open_store(pg_server.dsn)
    rows = build(readings("gw1", [(3, 1), (3, 2)]), [], 1.0)
    store.commit(build([], [], 0.0))  # creates the schema
    other = psycopg.connect(pg_server.dsn)
    cols = ", ".join(RECEPTION_COLUMNS)
    other.execute(f"INSERT INTO receptions ({cols}) VALUES (3, 2, 'gw1', -70, 1)")  # not committed
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(store.commit(rows)))
    t.start()
    t.join(1.0)
    assert t.is_alive(), "the batch waits for the other transaction's key"
    other.commit()
    t.join(30)
    other.close()
    try:
        assert done == [2]
        assert _count(store, "SELECT COUNT(*) FROM receptions") == [(2,)]
        assert store.slow_receptions == 1  # type: ignore[attr-defined]
    finally:
        store.close()


async def test_a_poison_message_inside_a_big_batch_is_dead_lettered_and_the_rest_commit(
        nats_cluster: Any, pg_server: Any) -> None:
    import psycopg

    cfg = _city_cfg(nats_cluster, pg_server, "c-big", max_messages=1000)
    setup = JetStreamSource(cfg.source, "setup")  # the stream, so the backlog waits in it
    await setup.start()
    await setup.close()
    items = [(f"urbansense.v1.angers.gw{1 + f % 2}.up", pack([(n, f) for n in range(10)]))
             for f in range(1, 301)]
    items.insert(150, ("urbansense.v1.angers.gw1.up", b"\x82\x01"))  # CBOR, not SenML
    await _nats_publish(nats_cluster, items)
    col = Collector(cfg)
    task = asyncio.create_task(col.run())
    try:
        await wait_for(lambda: col.metrics.acked.total() + col.metrics.dead_letters.total() >= len(items))
    finally:
        await col.stop()
        await task
    assert col.metrics.dead_letters.get("bad_pack") == 1
    assert col.metrics.stored.total() == 3000
    assert col.metrics.commits.total() <= 30, "many messages per transaction"
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone() == (3000,)


async def test_a_crash_between_commit_and_ack_redelivers_and_stores_nothing_twice(
        nats_cluster: Any, pg_server: Any) -> None:
    import psycopg

    crashed = Collector(_city_cfg(nats_cluster, pg_server, "c-crash", ack_wait_s=2.0, max_messages=500))
    committed = asyncio.Event()

    async def never_ack(deliveries: list[Any]) -> None:  # the process dies right after commit
        committed.set()
        raise RuntimeError("crashed between commit and ack")

    crashed.source.ack = never_ack  # type: ignore[method-assign]
    task = asyncio.create_task(crashed.run())
    await asyncio.wait_for(crashed.started.wait(), 30)
    items = [(f"urbansense.v1.angers.gw{g}.up", pack([(n, f) for n in range(20)]))
             for f in range(1, 11) for g in (1, 2)]
    await _nats_publish(nats_cluster, items)
    await asyncio.wait_for(committed.wait(), 30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await crashed.source.close()
    first = crashed.metrics.stored.total()
    assert first > 0
    survivor = Collector(_city_cfg(nats_cluster, pg_server, "c-after", ack_wait_s=2.0))
    task = asyncio.create_task(survivor.run())
    try:
        await asyncio.wait_for(survivor.started.wait(), 30)
        await wait_for(lambda: survivor.metrics.acked.total() >= len(items), 60)
    finally:
        await survivor.stop()
        await task
    assert first + survivor.metrics.stored.total() == 200
    assert survivor.metrics.dead_letters.total() == 0
    assert survivor.metrics.duplicates.total() >= first  # the crashed batch came back, stored nothing
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone() == (200,)
        assert conn.execute("SELECT COUNT(*) FROM receptions").fetchone() == (400,)
