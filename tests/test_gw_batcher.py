"""Where a pack closes (gateway/batcher.py's contract): at ``max_records`` frames, before it
would pass ``max_bytes``, when its oldest frame is ``max_age_s`` old, or ``ack_max_delay_ms``
after a frame that waits for a serial ack; alarm packs go to the outbox as alarms."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pytest

from gateway.config import BatchConfig
from gateway.dedup import DedupIndex
from gateway.downlinks import Downlink
from gateway.flow import Accepted, Duplicate, Heard
from gateway.outbox import PRIORITY_ALARM, PRIORITY_ORDINARY
from gateway.registry import Node, Registry
from tests.test_gw_promises import _Stage
from tests.test_gw_support import KEYS, decode_ack, frame
from urbansense.wire.protocol import T_ALARM, NodeKeys
from urbansense.wire.senml_reader import frames_from_pack


def _accepted(s: _Stage, node: int, fcnt: int, serial: bool = False, ftype: int = 0) -> Accepted:
    acks: list[bytes] = []
    v = s.verifier.process(Heard(frame(node, fcnt, ftype=ftype), "serial" if serial else "ble",
                                 reply=acks.append if serial else None))
    assert isinstance(v, Accepted)
    return v


def _packs(s: _Stage) -> list[list[tuple[int, int]]]:
    return [sorted({(n, f) for n, f, _ in frames_from_pack(b.payload)}) for b in s.outbox.peek(0, 1000)]


def test_a_pack_closes_at_max_records(tmp_path: Path) -> None:
    s = _Stage(tmp_path, BatchConfig(max_records=3, max_age_s=60))
    for f in range(1, 8):
        s.batcher.add(_accepted(s, 1, f))
    assert _packs(s) == [[(1, 1), (1, 2), (1, 3)], [(1, 4), (1, 5), (1, 6)]]
    s.batcher.flush()
    assert _packs(s)[-1] == [(1, 7)] and s.batcher.deadline_s() is None
    s.outbox.close()


def test_a_pack_never_passes_max_bytes_and_closes_only_when_the_next_frame_would(tmp_path: Path) -> None:
    max_bytes = 400
    s = _Stage(tmp_path, BatchConfig(max_records=1000, max_bytes=max_bytes, max_age_s=60))
    for f in range(1, 30):
        s.batcher.add(_accepted(s, 1 + f % 2, f))
    s.batcher.flush()
    payloads = [b.payload for b in s.outbox.peek(0, 1000)]
    assert len(payloads) > 2
    assert all(len(p) <= max_bytes for p in payloads)
    per_frame = len(payloads[1]) / len(_packs(s)[1])
    assert all(len(p) + per_frame > max_bytes - 8 for p in payloads[:-1])  # none closed early
    assert sum(len(p) for p in _packs(s)) == 29
    s.outbox.close()


def test_the_deadline_is_the_oldest_frames_age_or_the_ack_delay_whichever_first(tmp_path: Path) -> None:
    s = _Stage(tmp_path, BatchConfig(max_age_s=30, ack_max_delay_ms=200))
    assert s.batcher.close_deadline_s() is None
    t0 = time.monotonic()
    s.batcher.add(_accepted(s, 1, 1))
    d = s.batcher.close_deadline_s()
    assert d is not None and t0 + 29 < d <= time.monotonic() + 30
    # A BLE frame waits for no ack: the stage wakes durable_ms after it to stage it, long
    # before the pack closes.
    staged = s.batcher.deadline_s()
    assert staged is not None and staged <= time.monotonic() + BatchConfig().durable_ms / 1000 < d
    s.batcher.tick()
    assert s.outbox.depth == 0  # not due yet
    s.batcher.add(_accepted(s, 2, 1, serial=True))  # a node waits for its ack
    d2 = s.batcher.close_deadline_s()
    assert d2 is not None and d2 <= time.monotonic() + 0.2 and d2 < d
    s.batcher.add(_accepted(s, 1, 2, serial=True))  # a second waiting frame does not push it back
    assert s.batcher.close_deadline_s() == d2
    s.outbox.close()


def test_tick_closes_a_pack_whose_deadline_passed(tmp_path: Path) -> None:
    s = _Stage(tmp_path, BatchConfig(max_age_s=0.0))
    s.batcher.add(_accepted(s, 1, 1))
    s.batcher.tick()
    assert s.outbox.depth == 1 and s.batcher.deadline_s() is None
    s.outbox.close()


def test_a_pack_with_an_alarm_is_stored_as_an_alarm(tmp_path: Path) -> None:
    s = _Stage(tmp_path)
    s.batcher.add(_accepted(s, 1, 1))
    s.batcher.flush()
    s.batcher.add(_accepted(s, 1, 2))
    s.batcher.add(_accepted(s, 2, 1, ftype=T_ALARM))
    s.batcher.flush()
    assert [b.priority for b in s.outbox.peek(0, 10)] == [PRIORITY_ORDINARY, PRIORITY_ALARM]
    assert [b.frames for b in s.outbox.peek(0, 10)] == [1, 2]
    s.outbox.close()


def test_a_duplicate_keeps_the_strongest_rssi_and_joins_the_ack(tmp_path: Path) -> None:
    """gateway/dedup.py: a repeat of a waiting frame leaves the best RSSI in the pack (never a
    weaker or a missing one) and its reply gets the ack after the commit."""
    s = _Stage(tmp_path, BatchConfig(max_age_s=60))
    data = frame(1, 5)
    first = s.verifier.process(Heard(data, "ble", rssi_dbm=-90))
    assert isinstance(first, Accepted)
    s.batcher.add(first)
    by_age = s.batcher.close_deadline_s()
    ble = s.verifier.process(Heard(data, "ble", rssi_dbm=-99))
    assert isinstance(ble, Duplicate)
    s.batcher.add(ble)
    assert s.batcher.close_deadline_s() == by_age  # nothing waits for an ack yet
    acks: list[bytes] = []
    for rssi in (-60, -95, None):
        d = s.verifier.process(Heard(data, "serial", rssi_dbm=rssi, reply=acks.append))
        assert isinstance(d, Duplicate)
        t0 = time.monotonic()
        s.batcher.add(d)
        if rssi == -60:  # the first reply brings the close forward to ack_max_delay_ms
            d2 = s.batcher.close_deadline_s()
            assert d2 is not None and t0 < d2 <= time.monotonic() + BatchConfig().ack_max_delay_ms / 1000
    assert first.record.rssi_dbm == -60 and len(first.replies) == 3
    assert acks == [] and s.batcher.close_deadline_s() is not None
    s.batcher.flush()
    assert len(acks) == 3 and len(set(acks)) == 1
    assert s.outbox.depth == 1 and [(n, f) for n, f, _ in frames_from_pack(s.outbox.peek(0, 1)[0].payload)] == [(1, 5)]
    s.outbox.close()


def test_a_stronger_duplicate_re_encodes_and_a_weaker_one_does_not(tmp_path: Path) -> None:
    s = _Stage(tmp_path)
    acc = s.verifier.process(Heard(frame(2, 3), "ble", rssi_dbm=None))
    assert isinstance(acc, Accepted)
    index = DedupIndex()
    assert index.add(acc) and len(index) == 1
    acc.packed = (b"x", 1)
    assert index.merge(Duplicate(2, 3, None, None)) and acc.record.rssi_dbm is None and acc.packed == (b"x", 1)
    assert index.merge(Duplicate(2, 3, -70, None)) and acc.record.rssi_dbm == -70 and acc.packed is None
    acc.packed = (b"x", 1)
    assert index.merge(Duplicate(2, 3, -70, None)) and acc.packed == (b"x", 1)  # equal: no change
    assert index.merge(Duplicate(2, 3, -80, None)) and acc.record.rssi_dbm == -70
    assert not index.merge(Duplicate(2, 4, -10, None)) and not index.merge(Duplicate(1, 3, -10, None))
    index.clear()
    assert len(index) == 0 and not index.merge(Duplicate(2, 3, -10, None))


def test_index_add_merges_a_second_accepted_of_the_same_counter(tmp_path: Path) -> None:
    s = _Stage(tmp_path)
    a = s.verifier.process(Heard(frame(1, 9), "ble", rssi_dbm=-88))
    assert isinstance(a, Accepted)
    b = Accepted(dataclasses.replace(a.record, rssi_dbm=-40), a.frame, a.kind, a.alarm, [print])
    index = DedupIndex()
    assert index.add(a)
    assert not index.add(b) and len(index) == 1
    assert a.record.rssi_dbm == -40 and a.replies == [print] and a.packed is None
    other = s.verifier.process(Heard(frame(2, 9), "ble"))
    assert isinstance(other, Accepted) and index.add(other) and len(index) == 2  # another node


def test_a_duplicate_of_a_committed_frame_is_acked_again_with_the_cached_ack(tmp_path: Path) -> None:
    s = _Stage(tmp_path)
    acks: list[bytes] = []
    data = frame(1, 7)
    s.batcher.add(s.heard(data, acks))
    assert acks == []
    s.batcher.flush()
    assert len(acks) == 1
    s.batcher.add(s.heard(data, acks))  # the node missed the ack and sends the frame again
    assert len(acks) == 2 and acks[1] == acks[0] and s.outbox.depth == 1
    s.batcher.add(Duplicate(1, 7, None, None))  # heard over BLE: nothing to reply to
    s.batcher.add(Duplicate(1, 8, None, acks.append))  # never accepted: never acked
    assert len(acks) == 2
    s.outbox.close()


def test_a_pack_of_exactly_max_bytes_is_one_pack_and_one_byte_less_splits_it(tmp_path: Path) -> None:
    big = _Stage(tmp_path / "big", BatchConfig(max_records=1000, max_bytes=100_000, max_age_s=60))
    for f in (1, 2, 3):
        big.batcher.add(_accepted(big, 1, f))
    big.batcher.flush()
    size = len(big.outbox.peek(0, 1)[0].payload)
    big.outbox.close()
    for max_bytes, packs in ((size, [[(1, 1), (1, 2), (1, 3)]]), (size - 1, [[(1, 1), (1, 2)], [(1, 3)]])):
        s = _Stage(tmp_path / str(max_bytes), BatchConfig(max_records=1000, max_bytes=max_bytes, max_age_s=60))
        for f in (1, 2, 3):
            s.batcher.add(_accepted(s, 1, f))
        s.batcher.flush()
        assert _packs(s) == packs
        s.outbox.close()


def test_tick_at_the_deadline_itself_closes_or_stages(tmp_path: Path) -> None:
    s = _Stage(tmp_path, BatchConfig(max_age_s=60))
    s.batcher.add(_accepted(s, 1, 1))
    staged = s.batcher.deadline_s()
    close = s.batcher.close_deadline_s()
    assert staged is not None and close is not None and staged < close
    s.batcher.tick(staged - 0.001)
    assert s.metrics.staging_commits.total() == 0
    s.batcher.tick(staged)
    assert s.metrics.staging_commits.total() == 1 and s.outbox.depth == 0
    s.batcher.tick(close - 0.001)
    assert s.outbox.depth == 0
    s.batcher.tick(close)
    assert s.outbox.depth == 1 and s.batcher.deadline_s() is None
    s.outbox.close()


def test_a_frame_whose_rssi_a_duplicate_raised_is_staged_and_recovered(tmp_path: Path) -> None:
    """The merge drops the frame's encoded records (gateway/dedup.py): staging encodes them
    again, and the next start recovers the frame."""
    s = _Stage(tmp_path, BatchConfig(max_age_s=60))
    data = frame(1, 4)
    first = s.verifier.process(Heard(data, "ble", rssi_dbm=-90))
    assert isinstance(first, Accepted)
    s.batcher.add(first)
    dup = s.verifier.process(Heard(data, "ble", rssi_dbm=-50))
    assert isinstance(dup, Duplicate)
    s.batcher.add(dup)
    assert first.packed is None
    due = s.batcher.deadline_s()
    assert due is not None
    s.batcher.tick(due)
    assert s.metrics.staging_commits.total() == 1 and s.outbox.depth == 0
    again = _Stage(tmp_path, BatchConfig(max_age_s=60))  # a process that stopped before the close
    [b] = again.outbox.peek(0, 10)
    [(node, fcnt, values)] = frames_from_pack(b.payload)
    assert (node, fcnt) == (1, 4) and values
    s.outbox.close()
    again.outbox.close()


def test_after_a_restart_a_duplicate_gets_a_new_ack_with_the_pending_commands(tmp_path: Path) -> None:
    """No cached ack after a restart: the new one carries the node's pending downlink set
    (every ack at or above the set's sent DCnt must, gateway/downlinks.py), this node's
    counters and key."""
    s = _Stage(tmp_path)
    first: list[bytes] = []
    s.batcher.add(s.heard(frame(1, 5), first))
    s.batcher.flush()
    s.outbox.close()
    s = _Stage(tmp_path)
    s.batcher.downlinks.queue(Downlink(1, {1: 900}))
    again: list[bytes] = []
    dup = s.heard(frame(1, 5), again)
    assert isinstance(dup, Duplicate)
    s.batcher.add(dup)
    assert len(again) == 1 and again != first
    assert decode_ack(1, again[0]) == (decode_ack(1, first[0])[0], 5, {1: 900})
    s.outbox.close()


def test_a_duplicate_of_a_node_never_heard_or_no_longer_served_is_not_acked(tmp_path: Path) -> None:
    s = _Stage(tmp_path)
    acks: list[bytes] = []
    s.batcher.add(Duplicate(2, 1, None, acks.append))  # node 2 is served, nothing of it committed
    s.batcher.add(s.heard(frame(1, 5), acks))
    s.batcher.flush()
    assert len(acks) == 1
    s.registry.replace(Registry([Node(2, "water", NodeKeys(KEYS[2]))]))  # node 1 removed
    s.batcher.add(Duplicate(1, 5, None, acks.append))
    assert len(acks) == 1
    s.outbox.close()


def test_a_downlink_set_rides_the_acks_until_a_frame_reports_its_dcnt(tmp_path: Path) -> None:
    """The set goes with the next ack (its DCnt recorded as sent); a later frame whose dcnt
    reading reaches it confirms it: that frame's ack and the ones after carry nothing."""
    s = _Stage(tmp_path)
    s.batcher.downlinks.queue(Downlink(1, {1: 900}))
    acks: list[bytes] = []
    s.batcher.add(s.heard(frame(1, 1), acks))
    s.batcher.add(s.heard(frame(2, 1), acks))
    s.batcher.flush()
    sent_dcnt, _, cmds = decode_ack(1, acks[0])
    assert cmds == {1: 900} and decode_ack(2, acks[1])[2] is None
    s.batcher.add(s.heard(frame(1, 2, {5: 3600, 14: sent_dcnt - 1}), acks))  # not applied yet
    s.batcher.flush()
    assert decode_ack(1, acks[2])[2] == {1: 900}
    s.batcher.add(s.heard(frame(1, 3, {5: 3600, 14: sent_dcnt}), acks))  # applied
    s.batcher.flush()
    s.batcher.add(s.heard(frame(1, 4), acks))
    s.batcher.flush()
    assert [decode_ack(1, a)[2] for a in acks[3:]] == [None, None]
    assert s.batcher.downlinks.commands_for(1) is None
    s.outbox.close()


def test_a_waiting_frame_of_a_node_no_longer_served_is_not_acked_and_the_others_are(tmp_path: Path) -> None:
    s = _Stage(tmp_path)
    gone: list[bytes] = []
    served: list[bytes] = []
    s.batcher.add(s.heard(frame(1, 1), gone))
    s.batcher.add(s.heard(frame(2, 1), served))
    s.registry.replace(Registry([Node(2, "water", NodeKeys(KEYS[2]))]))  # node 1 removed
    s.batcher.flush()
    assert gone == [] and len(served) == 1 and s.outbox.depth == 1
    s.outbox.close()


def test_a_node_health_was_not_told_about_is_listed_with_its_kind(tmp_path: Path) -> None:
    """A frame accepted while a registry reload removed its node from health: the commit
    lists it again, with the kind verify gave it."""
    s = _Stage(tmp_path)
    s.batcher.add(s.heard(frame(1, 1), []))
    s.batcher.health.registry_changed(s.registry, [], [1])
    s.batcher.flush()
    assert s.batcher.health.nodes[1].kind == "water" and s.batcher.health.nodes[1].frames == 1
    s.outbox.close()


def test_a_duplicate_heard_over_ble_is_not_replied_to(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = _Stage(tmp_path)
    s.batcher.add(s.heard(frame(1, 7), []))
    s.batcher.flush()
    with caplog.at_level(logging.DEBUG, logger="gateway.batcher"):
        s.batcher.add(Duplicate(1, 7, -60, None))
    assert caplog.messages == [] and s.metrics.acks_sent.total() == 1
    s.outbox.close()
