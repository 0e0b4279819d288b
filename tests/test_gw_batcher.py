"""Where a pack closes (gateway/batcher.py's contract): at ``max_records`` frames, before it
would pass ``max_bytes``, when its oldest frame is ``max_age_s`` old, or ``ack_max_delay_ms``
after a frame that waits for a serial ack; alarm packs go to the outbox as alarms."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.config import BatchConfig
from gateway.flow import Accepted, Heard
from gateway.outbox import PRIORITY_ALARM, PRIORITY_ORDINARY
from tests.test_gw_promises import _Stage
from tests.test_gw_support import frame
from urbansense.wire.protocol import T_ALARM
from urbansense.wire.senml import frames_from_pack


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
