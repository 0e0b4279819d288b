"""The demo's accounting and verdict on fabricated runs: a bad run must fail, each fault counted
where it belongs (a frame heard but missing at the broker is not "lost on air")."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from urbansense.demo import Received, compare, verdict_ok

WATER, BIN = 0, 1
NODES = [SimpleNamespace(kind="water", node_id=10), SimpleNamespace(kind="bin", node_id=20)]
BY_ID = {n.node_id: n for n in NODES}
READINGS = {3: 12345, 5: 3600}  # volume 12.345 m3, battery 3.6 V
VALUES = {"vol": 12.345, "bat": 3.6}


def _frame(node: int, fcnt: int, transport: str = "ble", heard: bool = True, delivered: bool = True,
           decode_error: str | None = None, acked: bool | None = None) -> SimpleNamespace:
    """A frame as simulator.ledger.Frame has it; a serial frame is acked when heard unless told."""
    return SimpleNamespace(node=node, fcnt=fcnt, transport=transport, heard=1 if heard else 0,
                           delivered=delivered, readings=dict(READINGS), decode_error=decode_error,
                           acked=(heard and transport == "serial") if acked is None else acked)


def _run(frames: list[SimpleNamespace], at_broker: dict[tuple[int, int], list[tuple[str, dict[str, Any]]]]
         ) -> dict[str, Any]:
    rx = Received()
    rx.frames.update(at_broker)
    return compare(SimpleNamespace(nodes_by_index=NODES, frames=frames), BY_ID, rx, [])


def test_a_clean_run_passes_and_accounts_for_every_frame() -> None:
    frames = [_frame(WATER, 1), _frame(WATER, 2, heard=False), _frame(BIN, 1, transport="serial"),
              _frame(BIN, 2, heard=True, delivered=False)]
    s = _run(frames, {(10, 1): [("gw-1", VALUES), ("gw-2", VALUES)], (20, 1): [("gw-1", VALUES)]})
    t = s["total"]
    assert {k: t[k] for k in ("sent", "lost_on_air", "lost_at_gateway", "heard", "delivered", "missing",
                              "duplicated", "wrong", "undecodable", "cross_gateway_copies")} == {
        "sent": 4, "lost_on_air": 1, "lost_at_gateway": 1, "heard": 3, "delivered": 2, "missing": 0,
        "duplicated": 0, "wrong": 0, "undecodable": 0, "cross_gateway_copies": 1}
    assert s["per_kind"]["water"]["sent"] == 2 and s["per_kind"]["bin"]["sent"] == 2
    assert verdict_ok(t)


def test_a_bad_run_fails_with_each_fault_counted_where_it_belongs() -> None:
    frames = [
        _frame(WATER, 1),                        # heard on air, never at the broker: missing
        _frame(WATER, 2, transport="serial"),    # serial, never at the broker: missing
        _frame(WATER, 3),                        # twice from one gateway: one duplicate
        _frame(WATER, 4),                        # wrong value at the broker
        _frame(BIN, 1, heard=False),             # lost on air: not a fault
        _frame(BIN, 2, decode_error="bad cbor"),  # the firmware cannot decode its own frame
    ]
    wrong = dict(VALUES, vol=12.346)
    s = _run(frames, {
        (10, 3): [("gw-1", VALUES), ("gw-1", VALUES)],
        (10, 4): [("gw-1", wrong)],
        (10, 99): [("gw-1", VALUES)],  # nobody sent it: forged
    })
    w, b, t = s["per_kind"]["water"], s["per_kind"]["bin"], s["total"]
    assert (w["sent"], w["lost_on_air"], w["missing"], w["duplicated"], w["wrong"], w["delivered"]) == (
        4, 0, 2, 1, 2, 2)
    assert (b["sent"], b["lost_on_air"], b["undecodable"], b["missing"]) == (2, 1, 1, 0)
    assert t["missing"] == 2 and t["duplicated"] == 1 and t["wrong"] == 2 and t["undecodable"] == 1
    assert not verdict_ok(t)


def test_a_forged_frame_from_an_unknown_node_is_wrong() -> None:
    s = _run([], {(77, 1): [("gw-1", VALUES)]})
    assert s["total"]["wrong"] == 1 and not verdict_ok(s["total"])


@pytest.mark.parametrize("fault", ["duplicated", "wrong", "missing", "undecodable"])
def test_any_one_fault_fails_the_verdict(fault: str) -> None:
    total = dict.fromkeys(("sent", "lost_on_air", "lost_at_gateway", "delivered", "duplicated", "wrong",
                           "missing", "undecodable"), 0)
    assert verdict_ok(total)
    total[fault] = 1
    assert not verdict_ok(total)
    total[fault] = 0
    total["lost_on_air"] = total["lost_at_gateway"] = 5  # reported, not faults
    assert verdict_ok(total)


FIELDS = ("sent", "lost_on_air", "serial_unacked", "lost_at_gateway", "undecodable", "heard", "delivered",
          "missing", "duplicated", "wrong", "cross_gateway_copies")


def test_every_count_is_reported_for_every_kind_and_the_total_even_at_zero() -> None:
    s = _run([], {})
    assert set(s["per_kind"]) == {"parking", "bin", "water"}
    for c in [*s["per_kind"].values(), s["total"]]:
        assert c == dict.fromkeys(FIELDS, 0)


def test_counts_add_up_frame_by_frame() -> None:
    """Two of each outcome in one kind (a count that is set, not added, shows), an undecodable
    frame first (the frames after it still count)."""
    frames = [_frame(WATER, 1, decode_error="x"), _frame(WATER, 2, decode_error="x"),
              _frame(WATER, 3, heard=False), _frame(WATER, 4, heard=False),
              _frame(WATER, 5, delivered=False), _frame(WATER, 6, delivered=False),
              *[_frame(WATER, f) for f in (7, 8, 9, 10)]]
    both = [("gw-1", VALUES), ("gw-2", VALUES)]
    wrong = [("gw-1", dict(VALUES, vol=1.0))]
    s = _run(frames, {(10, 7): both, (10, 8): both, (10, 9): wrong, (10, 10): wrong, (10, 11): wrong,
                      (10, 12): wrong})
    assert s["per_kind"]["water"] == {
        "sent": 10, "undecodable": 2, "lost_on_air": 2, "serial_unacked": 0, "lost_at_gateway": 2, "heard": 6,
        "delivered": 4, "missing": 0, "duplicated": 0, "wrong": 4, "cross_gateway_copies": 2}
    assert s["total"] == s["per_kind"]["water"]


@pytest.mark.parametrize(("readings", "got", "same"), [
    ({0: 1}, {"occ": True}, True),
    ({0: 1}, {"occ": False}, False),
    ({0: 0}, {"occ": False}, True),
    ({0: 1}, {"occ": 1}, False),  # a number is not a boolean
    ({7: 10}, {"arssi": -20.0}, True),  # ack_rssi has an offset of -30
    ({7: 10}, {"arssi": -40.0}, False),
    ({99: 7}, {"q99": 7}, True),  # a quantity the table does not know: its raw value
    ({99: 7}, {"q99": 8}, False),
    ({3: 12345}, {}, False),  # a reading missing from the record
    ({3: 0}, {"vol": 1e-12}, True),  # within 1e-9 of zero
    ({3: 12345}, {"vol": 12.3451}, False),
])
def test_values_are_compared_by_quantity(readings: dict[int, int], got: dict[str, Any], same: bool) -> None:
    frame = SimpleNamespace(node=WATER, fcnt=1, transport="serial", heard=0, delivered=True,
                            readings=readings, decode_error=None, acked=False)
    s = _run([frame], {(10, 1): [("gw-1", got)]})
    assert s["total"]["wrong"] == (0 if same else 1)


def test_an_unacknowledged_serial_frame_is_reported_not_missing() -> None:
    """The node keeps it to send again; if it reached the broker anyway (a lost ack) it counts."""
    frames = [_frame(BIN, 1, transport="serial", heard=False), _frame(BIN, 2, transport="serial", heard=False)]
    s = _run(frames, {(20, 2): [("gw-1", VALUES)]})
    b = s["per_kind"]["bin"]
    assert (b["sent"], b["serial_unacked"], b["heard"], b["missing"], b["delivered"]) == (2, 2, 0, 0, 1)
    assert verdict_ok(s["total"])


def test_heard_means_what_the_simulators_summary_says() -> None:
    """The demo counts heard, lost on air and unacked serial frames as ``urbansense sim run``
    does (once, serial frames were all "heard" in the demo, acked or not)."""
    from simulator.sim import Simulation

    sc = {"sim": {"name": "fates", "seed": 2, "duration": "6h"}, "nodes": [
        {"kind": "bin", "count": 2, "transport": "serial", "line_noise_ber": 3e-3},
        {"kind": "parking", "count": 3, "area": [0.0, 0.0, 400.0, 400.0]}]}
    sim = Simulation(sc)
    summary = sim.run()
    sim.close()
    assert summary["decode_errors"] == {}
    assert summary["frames"]["bin"]["serial_unacked"] > 0 and summary["frames"]["bin"]["heard"] > 0
    s = compare(sim, {n.node_id: n for n in sim.nodes}, Received(), [])
    for kind in ("bin", "parking"):
        for fate in ("heard", "lost_on_air", "serial_unacked"):
            assert s["per_kind"][kind][fate] == summary["frames"][kind][fate], (kind, fate)
