"""The gateway's durability promises (README, docs/GATEWAY.md), one test each.

Each test fails when the one line that keeps its promise is wrong; each was checked by planting
that fault by hand (issue 18): acks before the commit, the outbox row dropped before the
PUBACK, uplinks at QoS 0, the configured ``synchronous`` ignored, an overlong serial packet
dropped uncounted, a splitter that keeps everything it is fed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.batcher import Batcher
from gateway.config import BatchConfig, HealthConfig
from gateway.flow import Accepted, Duplicate, Heard
from gateway.health import Health
from gateway.metrics import Metrics
from gateway.outbox import Outbox
from gateway.registry import Node, Registry
from gateway.replay import WINDOW, Freshness, ReplayTable, judge, mark_seen
from gateway.verify import Verifier
from tests.test_gw_support import (
    KEYS,
    PtyNode,
    Subscriber,
    decode_ack,
    frame,
    make_config,
    wait_for,
)
from urbansense.wire import framing
from urbansense.wire.protocol import NodeKeys

UP = "urbansense/v1/test-site/gw-1/up"


class _Stage:
    """Verify and batch over a real outbox, as the gateway wires them (no event loop)."""

    def __init__(self, tmp_path: Path, cfg: BatchConfig | None = None) -> None:
        self.registry = Registry([Node(n, "water", NodeKeys(KEYS[n])) for n in (1, 2)])
        self.metrics = Metrics()
        self.outbox = Outbox(tmp_path / "o.db", 1 << 20, self.metrics)
        replay = ReplayTable(self.outbox.load_nodes())
        self.verifier = Verifier(self.registry, replay, self.metrics)
        self.batcher = Batcher(cfg or BatchConfig(), self.outbox, self.registry, replay,
                               Health(HealthConfig(), self.registry, lambda e: None), self.metrics)

    def heard(self, data: bytes, acks: list[bytes]) -> Accepted | Duplicate:
        v = self.verifier.process(Heard(data, "serial", reply=acks.append))
        assert v is not None
        return v


def _broken_commit(*args: Any, **kwargs: Any) -> int:
    raise sqlite3.OperationalError("disk I/O error")


def test_a_failing_commit_acks_nothing_and_the_retransmission_is_acked_once_on_disk(
    tmp_path: Path,
) -> None:
    s = _Stage(tmp_path)
    acks: list[bytes] = []
    real_commit = s.outbox.commit_batch
    s.outbox.commit_batch = _broken_commit  # type: ignore[method-assign]
    s.batcher.add(s.heard(frame(1, 7), acks))
    s.batcher.flush()
    assert acks == [], "acked a frame whose commit failed"
    assert s.metrics.commit_failed_readings.total() == 1 and s.outbox.depth == 0

    acks_at_commit: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> int:
        acks_at_commit.append(len(acks))
        return real_commit(*args, **kwargs)

    s.outbox.commit_batch = spy  # type: ignore[method-assign]
    s.batcher.add(s.heard(frame(1, 7), acks))  # the node retransmits: new again (marks rolled back)
    s.batcher.flush()
    assert acks_at_commit == [0], "an ack went out before the commit"
    assert len(acks) == 1 and decode_ack(1, acks[0])[1] == 7
    assert s.outbox.depth == 1 and s.metrics.acks_sent.total() == 1
    s.outbox.close()


def test_a_retransmission_waiting_behind_a_failed_commit_is_not_acked(tmp_path: Path) -> None:
    s = _Stage(tmp_path)
    first: list[bytes] = []
    again: list[bytes] = []
    original = s.heard(frame(1, 7), first)
    repeat = s.heard(frame(1, 7), again)  # judged before the original reached the batch
    assert isinstance(repeat, Duplicate)
    s.outbox.commit_batch = _broken_commit  # type: ignore[method-assign]
    s.batcher.add(original)
    s.batcher.flush()
    s.batcher.add(repeat)
    s.batcher.flush()
    assert first == again == [], "acked a frame that is not on disk"
    s.outbox.close()


def test_a_retransmission_merged_into_the_open_batch_is_acked_after_its_commit(tmp_path: Path) -> None:
    s = _Stage(tmp_path)
    first: list[bytes] = []
    again: list[bytes] = []
    s.batcher.add(s.heard(frame(1, 7), first))
    s.batcher.add(s.heard(frame(1, 7), again))
    assert first == again == []  # nothing committed yet
    s.batcher.flush()
    assert len(first) == 1 and again == first and s.outbox.depth == 1
    # Once committed, a later retransmission gets the same ack at once.
    late: list[bytes] = []
    s.batcher.add(s.heard(frame(1, 7), late))
    assert late == first
    s.outbox.close()


# -- the publisher: QoS 1, deleted only after the PUBACK ---------------------------------------


class _Proxy:
    """A TCP relay in front of the broker. ``hold()`` swallows bytes both ways (a PUBLISH
    vanishes mid-flight, no PUBACK comes back); ``cut()`` closes every relayed connection."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.host = "127.0.0.1"
        self.port = 0
        self.holding = False
        self.swallowed_up = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> _Proxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(self.broker.host, self.broker.port)
        except OSError:
            w.close()
            return
        self._writers += [w, uw]
        for src, dst, up in ((r, uw, True), (ur, w, False)):
            t = asyncio.create_task(self._pipe(src, dst, up))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await src.read(65536):
                if self.holding:
                    self.swallowed_up += len(data) if up else 0
                    continue
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.close()

    def cut(self) -> None:
        for w in self._writers:
            w.close()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def sub(mqtt_broker: Any) -> AsyncIterator[Subscriber]:
    s = Subscriber(mqtt_broker).start()
    await asyncio.wait_for(s.ready.wait(), 10)
    yield s
    await s.stop()


async def test_uplinks_are_published_at_qos_1(
    tmp_path: Path, mqtt_broker: Any, sub: Subscriber, running: Any
) -> None:
    gw = await running(make_config(tmp_path, mqtt_broker))
    assert gw.feed(frame(1, 1), "test")
    await wait_for(lambda: sub.frames, what="the uplink at the broker")
    up = [m for m in sub.messages if str(m.topic) == UP]
    assert [(m.qos, m.retain) for m in up] == [(1, False)]


async def test_a_batch_lost_mid_flight_stays_in_the_outbox_and_is_sent_again(
    tmp_path: Path, mqtt_broker: Any, sub: Subscriber, running: Any
) -> None:
    proxy = await _Proxy(mqtt_broker).start()
    try:
        gw = await running(make_config(tmp_path, proxy))
        assert gw.outbox is not None and gw.publisher is not None
        await asyncio.wait_for(gw.publisher.connected.wait(), 10)
        assert gw.feed(frame(1, 1), "test")
        await wait_for(lambda: sub.keys() == [(1, 1)], what="the first frame through the relay")
        await wait_for(lambda: gw.outbox is not None and gw.outbox.depth == 0, what="first PUBACK")

        proxy.holding = True
        assert gw.feed(frame(1, 2), "test")
        await wait_for(lambda: proxy.swallowed_up > 0, what="the PUBLISH lost mid-flight")
        assert gw.outbox.depth == 1, "a batch left the outbox without its PUBACK"
        proxy.cut()  # the broker drops the connection
        proxy.holding = False
        await wait_for(lambda: (1, 2) in sub.keys(), timeout_s=15, what="the lost batch sent again")
        await wait_for(lambda: gw.outbox is not None and gw.outbox.depth == 0, what="its PUBACK")
        assert sorted(set(sub.keys())) == [(1, 1), (1, 2)]
    finally:
        proxy.holding = False
        await proxy.stop()


# -- the outbox's synchronous setting ----------------------------------------------------------


@pytest.mark.parametrize(("setting", "pragma"), [("full", 2), ("normal", 1)])
async def test_the_outbox_runs_with_the_configured_synchronous(
    tmp_path: Path, setting: str, pragma: int, running: Any
) -> None:
    """PRAGMA synchronous read back on the gateway's own connection (it is per connection)."""
    broker = SimpleNamespace(host="127.0.0.1", port=1)  # never reached: the test needs no broker
    gw = await running(make_config(tmp_path, broker, outbox__synchronous=setting))
    assert gw.outbox is not None
    assert gw.outbox._db.execute("PRAGMA synchronous").fetchone()[0] == pragma


# -- outside bytes on a serial line: bounded, every rejection counted ------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=10), st.lists(st.integers(0, 600), max_size=4))
# The edges random runs seldom hit: exactly MAX_PACKET_LEN kept, one byte more dropped, two
# overruns counted twice; in one read and cut into reads inside a packet.
@example([b"\x01" * framing.MAX_PACKET_LEN, b"\x02" * (framing.MAX_PACKET_LEN + 1), b"\x03" * 300], [])
@example([b"\x01" * framing.MAX_PACKET_LEN, b"\x02" * (framing.MAX_PACKET_LEN + 1), b"\x03" * 300], [100, 200, 300, 100])
def test_the_splitter_returns_exactly_the_short_packets(pieces: list[bytes], lengths: list[int]) -> None:
    """A model: packets are the non-empty runs between zeros, up to MAX_PACKET_LEN bytes;
    each longer run is dropped and counted, however it is cut into reads."""
    stream = b"\x00".join(p.replace(b"\x00", b"") for p in pieces) + b"\x00"
    splitter = framing.PacketSplitter()
    got: list[bytes] = []
    start = 0
    for n in [*lengths, len(stream)]:
        got += splitter.feed(stream[start:start + n])
        start += n
    runs = [r for r in stream.split(b"\x00") if r]
    assert got == [r for r in runs if len(r) <= framing.MAX_PACKET_LEN]
    assert splitter.overruns == sum(len(r) > framing.MAX_PACKET_LEN for r in runs)


def test_endless_bytes_without_a_delimiter_keep_the_splitter_bounded() -> None:
    splitter = framing.PacketSplitter()
    chunk = bytes(range(1, 256)) * 16  # 4 KiB, no zero
    tracemalloc.start()
    try:
        for _ in range(2560):  # 10 MiB
            assert splitter.feed(chunk) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert splitter.overruns == 1  # one endless packet, counted once
    assert splitter.feed(b"\x00" + framing.wrap(frame(1, 1))) == [framing.wrap(frame(1, 1))[:-1]]


async def test_an_overlong_serial_packet_is_counted_and_the_next_frame_is_acked(
    tmp_path: Path, mqtt_broker: Any, running: Any
) -> None:
    node = PtyNode()
    gw = await running(make_config(tmp_path, mqtt_broker, serial__ports=[node.path]))
    await asyncio.wait_for(gw.serial_ports[0].opened.wait(), 5)
    node.send_raw(b"\x01" * 5000 + b"\x00")
    node.send(frame(1, 1))
    await wait_for(lambda: node.acks, what="ack after the overlong packet")
    assert gw.metrics.rejections.get("too_long") == 1
    assert gw.metrics.frames_in.get("serial") == 2
    node.close()


# -- the replay window across commits and crashes ------------------------------------------------


_OPS = st.lists(st.one_of(st.tuples(st.just("frame"), st.integers(1, 200)),
                          # a counter this far below the mark: the window's edges
                          st.tuples(st.just("back"), st.sampled_from([1, 2, WINDOW - 1, WINDOW, WINDOW + 1])),
                          st.tuples(st.just("commit"), st.just(0)),
                          st.tuples(st.just("crash"), st.just(0))), max_size=40)


@settings(max_examples=80, deadline=None)
@given(_OPS)
def test_the_replay_window_across_commits_and_crashes_matches_its_model(ops: list[tuple[str, int]]) -> None:
    """RFC 4303's window as PROTOCOL.md section 4 states it, through verify, the batcher and a
    real outbox reopened after each crash: what was committed is remembered, what was only
    accepted is forgotten (it was never acked, the node sends it again)."""
    with tempfile.TemporaryDirectory() as tmp:
        s = _Stage(Path(tmp))
        committed: set[int] = set()
        pending: set[int] = set()
        for op, fcnt in ops:
            if op == "commit":
                s.batcher.flush()
                committed |= pending
                pending.clear()
                continue
            if op == "crash":
                s.outbox._db.close()  # a kill -9: no flush, no clean close
                s = _Stage(Path(tmp))
                pending.clear()
                continue
            accepted = committed | pending
            mark = max(accepted, default=None)
            if op == "back":
                fcnt = max(1, (mark or 0) - fcnt)
            if mark is None or fcnt > mark:
                want = "new"
            elif fcnt == mark:
                want = "duplicate"
            elif mark - fcnt > WINDOW:
                want = "replay"
            else:
                want = "duplicate" if fcnt in accepted else "late"
            late_before = s.metrics.late_frames.total()
            v = s.verifier.process(Heard(frame(1, fcnt), "serial"))
            if want in ("new", "late"):
                assert isinstance(v, Accepted), (want, fcnt, sorted(accepted))
                assert s.metrics.late_frames.total() - late_before == (want == "late")
                pending.add(fcnt)
                s.batcher.add(v)
            elif want == "duplicate":
                assert isinstance(v, Duplicate), (want, fcnt, sorted(accepted))
                s.batcher.add(v)
            else:
                assert v is None and s.metrics.rejections.get("replay") >= 1, (fcnt, sorted(accepted))
        s.outbox.close()


def test_a_retransmission_of_a_committed_late_frame_is_acked_again(tmp_path: Path) -> None:
    """A serial node's backlog frame accepted late, below the mark, then retransmitted (its
    ack was lost): committed, so acked again, with the same ack."""
    s = _Stage(tmp_path)
    acks: list[bytes] = []
    for fcnt in (5, 3):  # 3 arrives after 5: late
        s.batcher.add(s.heard(frame(1, fcnt), acks))
        s.batcher.flush()
    again: list[bytes] = []
    s.batcher.add(s.heard(frame(1, 3), again))
    assert again == [acks[1]] and decode_ack(1, again[0])[1] == 3
    s.outbox.close()


def test_the_last_eight_acks_are_re_sent_unchanged(tmp_path: Path) -> None:
    """A retransmission gets the very ack it missed (same downlink counter) for the node's last
    eight frames; an older one gets a fresh ack for the same counter."""
    s = _Stage(tmp_path)
    first: list[bytes] = []
    for fcnt in range(1, 10):
        s.batcher.add(s.heard(frame(1, fcnt), first))
        s.batcher.flush()
    assert [decode_ack(1, a)[0] for a in first] == list(range(1, 10))  # downlink counters from 1
    for fcnt in range(2, 10):
        again: list[bytes] = []
        s.batcher.add(s.heard(frame(1, fcnt), again))
        assert again == [first[fcnt - 1]], fcnt
    oldest: list[bytes] = []
    s.batcher.add(s.heard(frame(1, 1), oldest))
    assert oldest != [first[0]] and decode_ack(1, oldest[0])[1] == 1
    s.outbox.close()


def test_a_retransmission_after_a_gateway_restart_is_acked_again(tmp_path: Path) -> None:
    """Committed before the restart: still known as committed (and acked, with a downlink
    counter above every one sent before), never taken for a new frame."""
    s = _Stage(tmp_path)
    acks: list[bytes] = []
    for fcnt in (3, 5):
        s.batcher.add(s.heard(frame(1, fcnt), acks))
        s.batcher.flush()
    s.outbox.close()
    s = _Stage(tmp_path)
    for fcnt in (5, 3):
        again: list[bytes] = []
        v = s.heard(frame(1, fcnt), again)
        assert isinstance(v, Duplicate)
        s.batcher.add(v)
        assert len(again) == 1 and decode_ack(1, again[0])[1] == fcnt
        assert decode_ack(1, again[0])[0] >= decode_ack(1, acks[-1])[0]
    assert s.outbox.depth == 2  # nothing stored twice
    s.outbox.close()


def test_a_bug_in_verify_is_counted_as_verify_s_internal_error_not_a_rejection(tmp_path: Path) -> None:
    s = _Stage(tmp_path)

    def broken(node_id: int) -> None:
        raise RuntimeError("a bug")

    s.verifier.registry = SimpleNamespace(get=broken)  # type: ignore[assignment]
    with _records("gateway.verify") as records:
        assert s.verifier.process(Heard(frame(1, 1), "serial")) is None
    assert [r.levelno for r in records] == [logging.ERROR]  # loud: a bug, not outside bytes
    assert s.metrics.internal_errors.get("verify") == 1 and s.metrics.internal_errors.total() == 1
    assert s.metrics.rejections.total() == 0 and s.metrics.frames_in.get("serial") == 1
    s.outbox.close()


@contextlib.contextmanager
def _records(name: str) -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_the_window_edges_accepting_twice_changes_nothing_and_a_jump_of_exactly_the_window() -> None:
    """mark_seen's contract (RFC 4303 3.4.3): accepting the mark or a counter already in the
    window changes nothing; after a jump of exactly WINDOW the old mark is still remembered,
    one more and it falls out; the counter just below the mark is the window's first bit."""
    assert mark_seen(100, 0, 99) == (100, 1)
    mark, seen = mark_seen(None, 0, 100)
    mark, seen = mark_seen(mark, seen, 98)
    assert mark_seen(mark, seen, 100) == (mark, seen) and mark_seen(mark, seen, 98) == (mark, seen)
    m2, s2 = mark_seen(100, 0, 100 + WINDOW)
    assert judge(m2, s2, 100) is Freshness.DUPLICATE and judge(m2, s2, 101) is Freshness.LATE
    m3, s3 = mark_seen(100, 0, 101 + WINDOW)
    assert judge(m3, s3, 100) is Freshness.REPLAY and judge(m3, s3, 101) is Freshness.LATE
