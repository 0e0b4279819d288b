"""The simulator's books: what became of each frame sent, and the summary's counts of it.

The demo's verdict (urbansense/demo.py) and every figure of ``urbansense sim run`` stand on
these counts: a frame counted twice, or under the wrong fate, makes a bad run look good.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.summary import FrameOutcome, NodeOutcome, fate, frame_counts


def _node(index: int, kind: str) -> NodeOutcome:
    return NodeOutcome(index, kind, "esp32-devkitc", {}, 0.0, 0.0, 0.0, 0, {}, {}, False, 0, 0, {})


@pytest.mark.parametrize(("transport", "heard", "acked", "want"), [
    ("ble", 0, False, "lost_on_air"),
    ("ble", 0b10, False, "heard"),  # heard by the second gateway only
    ("ble", 0, True, "lost_on_air"),  # an ack means nothing for BLE
    ("serial", 0, True, "heard"),
    ("serial", 0b1, False, "serial_unacked"),  # bytes on the wire are not a gateway's promise
    ("serial", 0, False, "serial_unacked"),
])
def test_a_frame_s_fate(transport: str, heard: int, acked: bool, want: str) -> None:
    assert fate(transport, heard, acked) == want


def test_frame_counts_per_kind_and_in_total() -> None:
    """Each frame counted once, under its fate, by type (undecodable ones apart), with the
    boundary losses beside the fates; the total sums the kinds; the truth check compares
    each kind's own quantity with the world."""
    nodes = [_node(0, "parking"), _node(1, "bin"), _node(2, "water")]
    frames = [
        FrameOutcome(0, 0, "ble", 0b1, False, {"occupied": True}, {0: True}),
        FrameOutcome(0, 0, "ble", 0b11, False, {"occupied": False}, {0: True}, lost_at_boundary=True),
        FrameOutcome(0, 2, "ble", 0, False, {"occupied": True}, {0: True}),
        FrameOutcome(0, -1, "ble", 0b1, False, {"occupied": True}, {}),
        FrameOutcome(1, 1, "serial", 0b1, True, {"fill_pct": -3.0, "distance_mm": 1300.0}, {2: 2}),
        FrameOutcome(1, 0, "serial", 0, False, {"fill_pct": 120.0, "distance_mm": 0.0}, {2: 98}),
        FrameOutcome(2, 0, "ble", 0b1, False, {"volume_l": 10.123, "flow_lph": 0.0}, {3: 10}),
        FrameOutcome(2, 0, "ble", 0b1, False, {"volume_l": 20.0, "flow_lph": 0.0}, {3: 21}),
        FrameOutcome(2, 2, "ble", 0, False, {"volume_l": 20.0, "flow_lph": 0.0}, {4: 1}),
        FrameOutcome(2, 5, "ble", 0b1, False, {"volume_l": 20.0, "flow_lph": 0.0}, {}),  # a type with no name
    ]
    got = frame_counts(nodes, frames)
    assert list(got) == ["bin", "parking", "water", "total"]
    assert got["parking"] == {
        "sent": 4, "lost_on_air": 1, "heard": 3, "serial_unacked": 0, "lost_at_gateway": 1,
        "by_type": {"alarm": 1, "report": 2, "undecodable": 1},
        "truth_check": {"frames": 3, "agree": 2, "share": 0.6667}}  # the second is wrong
    assert got["bin"] == {
        "sent": 2, "lost_on_air": 0, "heard": 1, "serial_unacked": 1, "lost_at_gateway": 0,
        "by_type": {"report": 1, "status": 1},
        # |2 - 0| and |98 - 100| (the world's fill is clamped to 0..100 %)
        "truth_check": {"frames": 2, "mean_abs_error": 2.0, "unit": "pct"}}
    assert got["water"] == {
        "sent": 4, "lost_on_air": 1, "heard": 3, "serial_unacked": 0, "lost_at_gateway": 0,
        "by_type": {"5": 1, "alarm": 1, "report": 2},
        "truth_check": {"frames": 2, "mean_abs_error": 0.56, "unit": "l"}}  # (0.123 + 1) / 2
    assert got["total"] == {"sent": 10, "lost_on_air": 2, "heard": 7, "serial_unacked": 1, "lost_at_gateway": 1}


def test_a_kind_without_frames_is_counted_at_zero() -> None:
    got = frame_counts([_node(0, "parking"), _node(1, "water")], [
        FrameOutcome(1, 0, "ble", 0, False, {"volume_l": 1.0, "flow_lph": 0.0}, {})])
    assert got["parking"] == {"sent": 0, "lost_on_air": 0, "heard": 0, "serial_unacked": 0,
                              "lost_at_gateway": 0, "by_type": {}}
    assert "truth_check" not in got["water"]  # no reading of its quantity: nothing to compare
    assert got["total"] == {"sent": 1, "lost_on_air": 1, "heard": 0, "serial_unacked": 0, "lost_at_gateway": 0}


def test_an_outcome_crosses_interpreters_as_it_is() -> None:
    f = FrameOutcome(3, 1, "serial", 0b100, True, {"fill_pct": 1.0}, {2: 1}, lost_at_boundary=True)
    assert FrameOutcome.from_wire(f.wire()) == f
    n = _node(2, "bin")
    assert NodeOutcome.from_wire(n.wire()) == n


# -- the ledger: one frame per burst or per retransmitted frame, and who had it ------------

@pytest.fixture
def make_sim() -> Iterator[Callable[..., Any]]:
    """A district of two water nodes and two gateways (``sockets``: which are in the loop),
    node 1 on the serial link of the second gateway; closed after the test."""
    from simulator.sim import Simulation

    made: list[Any] = []

    def make(sockets: tuple[str | None, ...] = (None, None)) -> Any:
        gws = [{"id": f"gw-{i}", "x": 0.0, "y": 0.0, **({"sim_socket": s} if s else {})}
               for i, s in enumerate(sockets)]
        sim = Simulation({"sim": {"name": "books", "seed": 1}, "gateways": gws,
                          "nodes": [{"kind": "water", "count": 2, "area": [0, 0, 5, 5]}]})
        made.append(sim)
        sim.nodes[1].gw_id = "gw-1"
        sim.ledger.frames.clear()
        return sim

    yield make
    for sim in made:
        sim.close()


def _frame(node: Any, fcnt: int, volume_l: int = 5) -> bytes:
    from simulator.firmware_loader import firmware_module

    us_proto = firmware_module("us_proto")
    return bytes(us_proto.encode_uplink(us_proto.Keys(node.key), node.node_id, fcnt, us_proto.T_REPORT,
                                        {us_proto.Q_VOLUME_L: volume_l}))


def _adv(frame: bytes, company: int = 0xFFFF) -> bytes:
    return bytes([len(frame) + 3, 0xFF, company & 0xFF, company >> 8]) + frame


def test_a_burst_is_one_frame_and_a_new_payload_is_another(make_sim: Callable[..., Any]) -> None:
    sim = make_sim()
    led, node = sim.ledger, sim.nodes[0]
    a, b = _frame(node, 1), _frame(node, 2)
    first = led.register_ble_frame(node, 1.0, _adv(a))
    assert led.register_ble_frame(node, 1.1, _adv(a)) == first  # the same advert again
    assert led.register_ble_frame(node, 1.2, _adv(a, 0x0059)) != first  # another company id
    second = led.register_ble_frame(node, 2.0, _adv(b))
    fr = led.frames[second]
    assert (len(led.frames), fr.fcnt, fr.ftype, fr.readings, fr.company, fr.payload) == (3, 2, 0, {3: 5}, 0xFFFF, b)
    assert (fr.heard, fr.delivered, fr.acked, fr.decode_error, fr.t) == (0, 0, False, None, 2.0)
    assert led.frames[first + 1].company == 0x0059
    named = _adv(_frame(node, 3)) + bytes([5, 0x09]) + b"node"  # a name AD after it
    assert led.frames[led.register_ble_frame(node, 3.0, named)].fcnt == 3


def test_counters_past_65535_are_rebuilt_from_the_last_one(make_sim: Callable[..., Any]) -> None:
    """The frame carries 16 bits of its counter; the ledger rebuilds the rest from the node's
    last decoded frame, as a gateway does."""
    sim = make_sim()
    led, node = sim.ledger, sim.nodes[0]
    for fcnt in (65534, 65535, 65541, 131075):
        led.register_ble_frame(node, float(fcnt), _adv(_frame(node, fcnt)))
    assert [f.fcnt for f in led.frames] == [65534, 65535, 65541, 131075] and not led.decode_errors


def test_an_advert_that_is_no_frame_is_sent_and_counted_by_reason(make_sim: Callable[..., Any]) -> None:
    sim = make_sim()
    led, node = sim.ledger, sim.nodes[0]
    flags = bytes([2, 0x01, 0x06])  # no manufacturer data
    i = led.register_ble_frame(node, 1.0, flags)
    j = led.register_ble_frame(node, 2.0, _adv(bytes(12)))  # manufacturer data, not a frame
    assert (led.frames[i].decode_error, led.frames[i].company, led.frames[i].fcnt) == ("not_manufacturer_data", None, -1)
    assert led.frames[j].decode_error == "version" and led.frames[j].ftype == -1
    assert dict(led.decode_errors) == {"not_manufacturer_data": 1, "version": 1}
    overrun = _adv(bytes(12))[:-1]  # its length byte names one byte more than there is
    empty = bytes([3, 0xFF, 0x59, 0x00])  # manufacturer data with nothing after the company id
    for adv in (bytes([2, 0x01, 0x04]), overrun, _adv(bytes(13)), empty):
        led.register_ble_frame(node, 3.0, adv)
    assert dict(led.decode_errors) == {"not_manufacturer_data": 3, "version": 2, "short": 1}
    assert (led.frames[-1].company, led.frames[-1].payload) == (0x59, b"")
    assert [o.ftype for o in led.outcomes()] == [-1] * 6


def test_serial_retransmissions_are_one_frame_heard_by_the_acking_gateway(make_sim: Callable[..., Any]) -> None:
    sim = make_sim()
    led, node = sim.ledger, sim.nodes[1]  # on gw-1, the second gateway
    f = _frame(node, 7)
    i = led.register_serial_frame(node, 1.0, f, "gw-1")
    assert led.register_serial_frame(node, 1.3, f, "gw-1") == i
    assert led.register_serial_frame(node, 1.6, _frame(node, 8), "gw-1") == i + 1
    led.mark_serial_delivered(node, i)
    fr = led.frames[i]
    assert (fr.adverts, fr.delivered, fr.acked, fr.heard) == (2, 0b10, False, 0)
    assert [o.acked for o in led.outcomes()] == [False, False]
    led.mark_acked(node, 7)
    led.mark_acked(node, 99)  # an ack for a frame never sent changes nothing
    assert (fr.acked, fr.heard) == (True, 0b10)
    assert [(o.transport, o.heard, o.acked) for o in led.outcomes()] == [("serial", 0b10, True), ("serial", 0, False)]
    assert fate("serial", fr.heard, fr.acked) == "heard"


def test_lost_at_the_boundary_means_heard_in_the_loop_and_handed_to_none(make_sim: Callable[..., Any]) -> None:
    sim = make_sim((None, "/nonexistent/gw.sock"))  # gw-1 is in the loop (a socket to feed)
    led, node = sim.ledger, sim.nodes[0]
    i = led.register_ble_frame(node, 1.0, _adv(_frame(node, 1)))
    fr = led.frames[i]
    assert not led.lost_at_boundary(fr)  # heard by nobody: lost on air, not at the boundary
    led.deliver(i, 0, 1.0, -70.0)  # gw-0 is not in the loop
    assert not led.lost_at_boundary(fr) and fr.heard == 0b1
    led.deliver(i, 1, 1.0, -80.0)  # gw-1's socket refuses it (nothing listens)
    assert (fr.heard, fr.delivered, fr.datagram_errors) == (0b11, 0, 1)
    assert led.lost_at_boundary(fr)
    assert [o.lost_at_boundary for o in led.outcomes()] == [True]
    assert [o.lost_at_boundary for o in led.outcomes(boundary=False)] == [False]
    assert led.wire_outcomes() == [o.wire() for o in led.outcomes(boundary=False)]
    fr.delivered = 0b10
    assert not led.lost_at_boundary(fr)
    fr.delivered, fr.transport = 0, "serial"
    assert not led.lost_at_boundary(fr)  # a serial frame's fate is its ack


def test_the_strongest_reception_is_kept_per_gateway(make_sim: Callable[..., Any]) -> None:
    sim = make_sim()
    led, node = sim.ledger, sim.nodes[0]
    i = led.register_ble_frame(node, 1.0, _adv(_frame(node, 1)))
    for gi, rssi in ((0, -80.0), (0, -60.0), (0, -90.0), (1, -85.0)):
        led.deliver(i, gi, 1.0, rssi)
    assert led.frames[i].rssi == {0: -60.0, 1: -85.0}


def test_the_truth_file_gets_each_frame_once_when_its_fate_is_known(tmp_path: Path, make_sim: Callable[..., Any]) -> None:
    """A BLE frame once its burst and the air have settled (TRUTH_MARGIN_S after it), a serial
    frame once acknowledged (held meanwhile, without holding back the frames after it), the
    rest at the end."""
    from simulator.ledger import TRUTH_MARGIN_S

    sim = make_sim()
    led, water, serial = sim.ledger, sim.nodes[0], sim.nodes[1]
    led.open_truth(tmp_path / "t.jsonl")

    def written() -> list[tuple[str, int]]:
        assert led.truth_out is not None
        led.truth_out.flush()
        return [(r["transport"], r["fcnt"]) for r in map(json.loads, (tmp_path / "t.jsonl").read_text().splitlines())]

    led.register_serial_frame(serial, 1.0, _frame(serial, 4), "gw-1")
    led.register_ble_frame(water, 2.0, _adv(_frame(water, 1)))
    led.register_serial_frame(serial, 3.0, _frame(serial, 5), "gw-1")
    led.flush_truth(2.0 + TRUTH_MARGIN_S)  # the BLE frame's margin not yet over
    assert written() == []
    led.flush_truth(2.0 + TRUTH_MARGIN_S + 0.001)
    assert written() == [("ble", 1)]  # the unacked serial frame before it is held
    led.mark_acked(serial, 4)
    led.flush_truth(100.0)
    assert written() == [("ble", 1), ("serial", 4)]
    led.flush_truth(200.0)
    assert written() == [("ble", 1), ("serial", 4)]  # frame 5 still unacked
    led.flush_truth(math.inf)
    assert written() == [("ble", 1), ("serial", 4), ("serial", 5)]
    led.flush_truth(math.inf)
    led.close()
    recs = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r.get("acked") for r in recs] == [None, True, False]
    assert recs[0]["lost_on_air"] and recs[0]["heard_by"] == [] and recs[0]["transmissions"] == 0
    assert recs[1]["heard_by"] == ["gw-1"] and not recs[1]["lost_on_air"] and recs[1]["transmissions"] == 1


@pytest.mark.parametrize("extra", [
    {"nodes": [{"kind": "bin", "transport": "serial", "gateway": "gw-9"}]},
    {"nodes": [{"kind": "bin"}], "faults": [{"kind": "gateway_out_of_range", "gateway": "gw-9", "at": "1h"}]},
])
def test_a_scenario_naming_a_gateway_it_lacks_is_refused(extra: dict[str, Any]) -> None:
    """Once a serial group's frames went to the first gateway's books instead."""
    from simulator.scenario import from_dict

    with pytest.raises(ValueError, match="names gateway 'gw-9', not one of \\['gw-1', 'gw-2'\\]"):
        from_dict({"sim": {"name": "typo"}, "gateways": [{"id": "gw-1"}, {"id": "gw-2"}], **extra})
    from_dict({"sim": {"name": "ok"}, "gateways": [{"id": "gw-1"}, {"id": "gw-9"}], **extra})


def test_a_frame_handed_to_two_gateways_in_the_loop_is_delivered_to_both_as_its_node(
        tmp_path: Path, make_sim: Callable[..., Any]) -> None:
    """Each gateway's socket gets the advert with the node's BLE address and the strength it
    was heard at; the frame is delivered to both."""
    import socket

    import cbor2

    from simulator.advertising import address_bytes

    paths = [str(tmp_path / f"gw{i}.sock") for i in range(2)]
    socks = []
    for p in paths:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(p)
        s.settimeout(5)
        socks.append(s)
    try:
        sim = make_sim(tuple(paths))
        led, node = sim.ledger, sim.nodes[0]
        frame = _frame(node, 3)
        i = led.register_ble_frame(node, 1.0, _adv(frame))
        led.deliver(i, 1, 1.0, -71.4)
        led.deliver(i, 0, 1.0, -64.6)
        got = [cbor2.loads(s.recv(512)) for s in socks]
    finally:
        for s in socks:
            s.close()
    fr = led.frames[i]
    assert (fr.heard, fr.delivered, fr.datagram_errors) == (0b11, 0b11, 0)
    addr = ":".join(f"{b:02X}" for b in address_bytes(node.node_id))
    assert got == [[addr, -65, {0xFFFF: frame}], [addr, -71, {0xFFFF: frame}]]
    assert not led.lost_at_boundary(fr)
    rec = led.frame_record(fr)
    assert (rec["heard_by"], rec["delivered_to"], rec["undelivered_to"]) == (["gw-0", "gw-1"], ["gw-0", "gw-1"], [])


def test_a_truth_record_holds_what_the_frame_was_and_became(make_sim: Callable[..., Any]) -> None:
    sim = make_sim((None, "/nonexistent/gw.sock"))  # gw-1 in the loop, refusing
    led, water, serial = sim.ledger, sim.nodes[0], sim.nodes[1]
    ble = led.frames[led.register_ble_frame(water, 12.3456789, _adv(_frame(water, 9, 17)))]
    led.deliver(0, 1, 12.4, -80.26)
    led.deliver(0, 0, 12.4, -70.04)
    assert led.frame_record(ble) == {
        "node_id": water.node_id, "node": water.name, "kind": "water", "fcnt": 9, "ftype": "report",
        "readings": {"volume_l": 17}, "t_sim": 12.345679, "transport": "ble",
        "heard_by": ["gw-0", "gw-1"], "lost_on_air": False, "delivered_to": [], "undelivered_to": ["gw-1"],
        "lost_at_gateway_boundary": True, "transmissions": 0, "truth": ble.truth,
        "frame_hex": ble.payload.hex(), "rssi": {"gw-0": -70.0, "gw-1": -80.3}, "datagram_errors": 1}
    idx = led.register_serial_frame(serial, 20.0, _frame(serial, 4), "gw-1")
    led.mark_acked(serial, 4)  # acked without a delivery mark (the loopback acker)
    rec = led.frame_record(led.frames[idx])
    assert (rec["heard_by"], rec["delivered_to"], rec["undelivered_to"], rec["acked"]) == (["gw-1"], [], [], True)
    assert "rssi" not in rec and "datagram_errors" not in rec and not rec["lost_at_gateway_boundary"]
    bad = led.frames[led.register_ble_frame(water, 30.0, _adv(bytes(12)))]
    bad.readings = {99: 1}
    rec = led.frame_record(bad)
    assert (rec["fcnt"], rec["ftype"], rec["decode_error"], rec["readings"]) == (None, None, "version", {"99": 1})
    assert rec["transport"] == "ble" and rec["truth"] == bad.truth and set(rec["truth"]) == {"volume_l", "flow_lph"}
    ok = led.frames[led.register_ble_frame(water, 31.0, _adv(_frame(water, 10)))]
    ok.ftype = 7  # a type the registry does not name: its number
    assert led.frame_record(ok)["ftype"] == "7" and "decode_error" not in led.frame_record(ok)
