"""The batch stage verifies and batches the next frames while a batch's COMMIT (the fsync)
runs in the outbox's writer thread; nothing of that batch is acked or published before it
returns, and what a node is sent (marks, downlink commands) stays what is on disk."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.batcher import Batcher
from gateway.config import BatchConfig, HealthConfig
from gateway.health import Health
from gateway.metrics import Metrics
from gateway.outbox import Commit, Outbox
from gateway.protocol import NodeKeys
from gateway.registry import Node, Registry
from gateway.replay import ReplayTable
from gateway.verify import Heard, Verifier
from tests.test_gw_support import KEYS, decode_ack, frame, make_config, wait_for


def _hold_commits(outbox: Outbox) -> tuple[threading.Event, threading.Event]:
    """(entered, release): the next COMMIT waits in the writer thread until ``release``."""
    entered, release = threading.Event(), threading.Event()
    real = outbox._commit

    def held(c: Commit) -> None:
        if not release.is_set():
            entered.set()
            assert release.wait(30)
        real(c)

    outbox._commit = held  # type: ignore[method-assign]
    return entered, release


async def test_next_frames_are_verified_while_a_commit_runs_and_acks_wait_for_it(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    gw = await running(make_config(tmp_path, mqtt_broker, batch__max_records=2))
    assert gw.outbox is not None
    entered, release = _hold_commits(gw.outbox)
    acks: list[tuple[bytes, float]] = []  # (ack, readings committed when it was written)

    def reply(ack: bytes) -> None:
        acks.append((ack, gw.metrics.readings_committed.total()))

    for fcnt in (1, 2):
        gw.ingress.put_nowait(Heard(frame(1, fcnt), "serial", None, reply))
    await wait_for(entered.is_set, what="the first batch's COMMIT in the writer thread")
    gw.feed(frame(2, 1), "test")
    await wait_for(lambda: gw.metrics.frames_accepted.total() == 3, what="frame verified meanwhile")
    assert acks == [] and gw.outbox.depth == 0 and gw.metrics.published_batches.total() == 0
    release.set()
    await wait_for(lambda: len(acks) == 2, what="acks once committed")
    assert [decode_ack(1, a)[1] for a, _ in acks] == [1, 2] and all(n == 2 for _, n in acks)
    await wait_for(lambda: gw.metrics.published_readings.total() == 2, what="published")


async def test_commands_queued_while_the_batch_carrying_older_ones_commits_are_kept(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    """The settle after the commit dropped the node's pending commands, including those
    merged in while it ran: they were never sent."""
    gw = await running(make_config(tmp_path, mqtt_broker, batch__max_records=1))
    assert gw.outbox is not None and gw.batcher is not None
    batcher, outbox = gw.batcher, gw.outbox
    batcher.queue_commands(1, {1: 900})
    entered, release = _hold_commits(outbox)
    real_put = outbox.put_downlink

    def put_downlink(node_id: int, commands_json: str) -> None:
        release.set()  # a downlink arriving during the COMMIT: storing it waits for the COMMIT
        real_put(node_id, commands_json)

    outbox.put_downlink = put_downlink  # type: ignore[method-assign]
    acks: list[bytes] = []
    gw.ingress.put_nowait(Heard(frame(1, 1), "serial", None, acks.append))
    await wait_for(entered.is_set, what="the COMMIT of the batch carrying report_interval_s")
    batcher.queue_commands(1, {2: 5})
    await wait_for(lambda: len(acks) == 1, what="the first ack")
    assert decode_ack(1, acks[0])[2] == {1: 900}
    gw.ingress.put_nowait(Heard(frame(1, 2), "serial", None, acks.append))
    await wait_for(lambda: len(acks) == 2, what="the second ack")
    assert decode_ack(1, acks[1])[2] == {1: 900, 2: 5}


async def test_shutdown_waits_for_the_commit_in_the_writer_thread(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    mqtt_broker.stop()  # nothing leaves the outbox: it holds exactly what was committed
    gw = await running(make_config(tmp_path, mqtt_broker, batch__max_records=2))
    assert gw.outbox is not None
    entered, release = _hold_commits(gw.outbox)
    real_finish: Callable[[Commit], int] = gw.outbox.finish_batch

    def finish(c: Commit) -> int:
        release.set()  # the shutdown has come to wait for the COMMIT: let it return
        return real_finish(c)

    gw.outbox.finish_batch = finish  # type: ignore[method-assign]
    acks: list[bytes] = []
    for fcnt in (1, 2):
        gw.ingress.put_nowait(Heard(frame(1, fcnt), "serial", None, acks.append))
    await wait_for(entered.is_set, what="COMMIT held")
    gw.feed(frame(2, 1), "test")
    await wait_for(lambda: gw.metrics.frames_accepted.total() == 3, what="third frame verified")
    await gw.stop()
    assert len(acks) == 2 and gw.metrics.readings_committed.total() == 3
    ob = Outbox(gw.config.outbox_path, gw.config.outbox.max_bytes)
    assert [b.frames for b in ob.peek(0, 10)] == [2, 1]
    assert {r.node_id: r.fcnt for r in ob.load_nodes()} == {1: 2, 2: 1}
    ob.close()


def test_a_background_commit_is_invisible_until_finished_and_other_writes_wait(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 1 << 20, Metrics())
    entered, release = _hold_commits(ob)
    c = ob.begin_batch(b"\x80", 1, 0, background=True)
    assert entered.wait(10)
    assert not c.committed() and ob.pending_ids() == [] and ob.peek(0, 10) == []
    ob.flush_acks()  # a chore while it commits: returns at once, does not wait
    writer = threading.Thread(target=ob.put_downlink, args=(1, '{"1": 60}'))
    writer.start()  # other writes wait for the COMMIT
    writer.join(0.05)
    assert writer.is_alive()
    release.set()
    writer.join(10)
    assert ob.pending_ids() == [1]  # settled by the write that waited
    assert ob.finish_batch(c) == 1 and ob.finish_batch(c) == 1
    assert [b.batch_id for b in ob.peek(0, 10)] == [1] and ob.load_downlinks() == {1: '{"1": 60}'}
    ob.close()


def test_a_background_commit_refused_by_a_full_disk_is_retried_after_evicting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLITE_FULL at the COMMIT in the writer thread: finish_batch evicts and retries."""
    import sqlite3

    m = Metrics()
    ob = Outbox(tmp_path / "o.db", 1 << 20, m)
    for _ in range(3):
        ob.commit_batch(b"\x80" + bytes(2000), 1, 0)
    real = ob._commit
    calls = [0]

    def full_once(c: Commit) -> None:
        calls[0] += 1
        if calls[0] == 1:
            ob._rollback()
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            c.future.set_exception(exc)
            return
        real(c)

    monkeypatch.setattr(ob, "_commit", full_once)
    c = ob.begin_batch(b"\x81", 1, 0, background=True)
    assert ob.finish_batch(c) == 4
    assert ob.pending_ids()[-1] == 4 and m.outbox_dropped_batches.total() >= 1
    ob.close()


def test_outside_the_stage_a_close_is_synchronous(tmp_path: Path) -> None:
    """Batcher used directly (tests, the shutdown drain): acks are written when add returns."""
    reg = Registry([Node(1, "water", NodeKeys(KEYS[1]))])
    m = Metrics()
    replay = ReplayTable()
    ob = Outbox(tmp_path / "o.db", 1 << 20, m, "normal")
    b = Batcher(BatchConfig(max_records=1), ob, reg, replay, Health(HealthConfig(), reg, lambda e: None), m)
    acks: list[bytes] = []
    v = Verifier(reg, replay, m).process(Heard(frame(1, 1), "serial", None, acks.append))
    assert v is not None
    b.add(v)
    assert len(acks) == 1 and ob.pending_ids() == [1] and ob._writer is None
    ob.close()
