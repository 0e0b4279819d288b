"""Verify's verdicts that the promise tests do not reach: revoked nodes, the rejection log
naming the node, counters past 2^16 rebuilt from the high-water mark, the alarm flag."""

from __future__ import annotations

import logging

import pytest

from gateway.flow import NodeRow
from gateway.metrics import Metrics
from gateway.registry import Node, Registry
from gateway.replay import ReplayTable
from gateway.verify import Accepted, Duplicate, Heard, Verifier
from tests.test_gw_support import KEYS, frame
from urbansense.wire.protocol import T_ALARM, T_REPORT, NodeKeys
from urbansense.wire.quantities import Q_ALARMS


def _verifier(replay: ReplayTable | None = None) -> Verifier:
    reg = Registry([Node(1, "water", NodeKeys(KEYS[1]))], revoked=[2])
    return Verifier(reg, replay or ReplayTable(), Metrics())


def test_a_revoked_node_is_rejected_as_revoked_and_the_log_names_it(caplog: pytest.LogCaptureFixture) -> None:
    v = _verifier()
    with caplog.at_level(logging.WARNING, "gateway.verify"):
        assert v.process(Heard(frame(2, 1), "ble")) is None
        assert v.process(Heard(frame(3, 1), "ble")) is None
    assert v.metrics.rejections.get("revoked_node") == 1 and v.metrics.rejections.get("unknown_node") == 1
    text = caplog.text
    assert "reason=revoked_node" in text and "detail=00000002" in text
    assert "reason=unknown_node" in text and "detail=00000003" in text


def test_a_replay_is_logged_with_the_node_and_its_counter(caplog: pytest.LogCaptureFixture) -> None:
    v = _verifier()
    assert isinstance(v.process(Heard(frame(1, 500), "ble")), Accepted)
    with caplog.at_level(logging.WARNING, "gateway.verify"):
        assert v.process(Heard(frame(1, 10), "ble")) is None
    assert v.metrics.rejections.get("replay") == 1
    assert "node 00000001 fcnt 10 < 500" in caplog.text


def test_a_counter_far_past_2_to_the_16_is_rebuilt_from_the_high_water_mark() -> None:
    """Only 16 bits travel: 300,001 is 4 * 65,536 + 37,857, beyond the rollover search alone
    (docs/PROTOCOL.md 2.1); the persisted mark 300,000 finds it."""
    replay = ReplayTable([NodeRow(1, 300_000, 0, bytes(8))])
    v = _verifier(replay)
    got = v.process(Heard(frame(1, 300_001), "ble"))
    assert isinstance(got, Accepted) and got.record.fcnt == 300_001


@pytest.mark.parametrize(("ftype", "readings", "alarm"), [
    (T_REPORT, {5: 3600}, False),
    (T_REPORT, {Q_ALARMS: 0, 5: 3600}, False),
    (T_REPORT, {Q_ALARMS: 2, 5: 3600}, True),
    (T_ALARM, {5: 3600}, True),
])
def test_the_alarm_flag(ftype: int, readings: dict[int, int], alarm: bool) -> None:
    got = _verifier().process(Heard(frame(1, 1, readings, ftype=ftype), "ble"))
    assert isinstance(got, Accepted) and got.alarm is alarm


def test_an_accepted_frame_carries_what_was_heard() -> None:
    """The record and the verdict keep the frame, its type, the node's kind, the RSSI and the
    reply of the transport that heard it (BLE: none)."""
    data = frame(1, 1, {5: 3600}, ftype=T_ALARM)
    replies: list[bytes] = []
    ble = _verifier().process(Heard(data, "ble", rssi_dbm=-70))
    assert isinstance(ble, Accepted)
    assert (ble.frame, ble.kind, ble.record.ftype, ble.record.rssi_dbm, ble.replies) == (
        data, "water", T_ALARM, -70, [])
    serial = _verifier().process(Heard(data, "serial", reply=replies.append))
    assert isinstance(serial, Accepted) and serial.replies == [replies.append]


def test_each_node_s_last_rejection_is_kept_with_a_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """``rejected`` (the status page's 'why is my node not heard'): per node, the last reason,
    when, the RSSI, the transport and how many times; a serial packet is unwrapped to find the
    node. Bounded: past REJECTED_NODES_MAX nodes the oldest is dropped."""
    from gateway import verify
    from urbansense.wire import framing

    v = _verifier()
    assert v.process(Heard(frame(3, 1), "ble", rssi_dbm=-70, received_s=100.0)) is None
    assert v.rejected == {3: {"reason": "unknown_node", "at_s": 100.0, "rssi_dbm": -70, "transport": "ble",
                              "count": 1}}
    packet = framing.wrap(frame(3, 2))[:-1]  # the serial transport splits on the zero byte
    assert v.process(Heard(packet, "serial", wrapped=True, received_s=101.0)) is None
    assert v.rejected == {3: {"reason": "unknown_node", "at_s": 101.0, "rssi_dbm": None, "transport": "serial",
                              "count": 2}}
    monkeypatch.setattr(verify, "REJECTED_NODES_MAX", 3)
    for node in (10, 11):
        v.process(Heard(frame(node, 1), "ble"))
    assert list(v.rejected) == [3, 10, 11]
    v.process(Heard(frame(12, 1), "ble"))
    assert list(v.rejected) == [10, 11, 12]


def test_a_duplicate_carries_the_rssi_it_was_heard_at() -> None:
    v = _verifier()
    assert isinstance(v.process(Heard(frame(1, 1), "ble", rssi_dbm=-60)), Accepted)
    dup = v.process(Heard(frame(1, 1), "ble", rssi_dbm=-75))
    assert isinstance(dup, Duplicate) and (dup.node_id, dup.fcnt, dup.rssi_dbm) == (1, 1, -75)
