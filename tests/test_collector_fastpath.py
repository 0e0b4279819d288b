"""The collector's one-pass pack reader (``readings_from_pack``) equals the reference path
(``reference_readings``: the wire package's ``read_frames``) on every pack: the gateway's
packs (bn/bt written once per change, or per frame), tag-4 decimal fractions in values and
times (RFC 8949 3.4.4), and packs broken at random (then both refuse it as ``bad_pack``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.decode import Poison, readings_from_pack, reference_readings
from urbansense.wire.quantities import QUANTITIES
from urbansense.wire.senml import FrameRecord, encode_pack, pack_records

_frames = st.lists(st.builds(
    FrameRecord,
    node_id=st.integers(0, 2**32 - 1) | st.integers(0, 9000),
    fcnt=st.integers(0, 2**32 - 1),
    ftype=st.just(1),
    readings=st.dictionaries(st.sampled_from(sorted(QUANTITIES)) | st.integers(0, 40),
                             st.integers(-(2**31), 2**31 - 1), max_size=6),
    received_s=st.floats(1e9, 2e9) | st.integers(0, 2**40),
    rssi_dbm=st.none() | st.integers(-160, 39),
), min_size=1, max_size=8)

_scalar = (st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.booleans() | st.none()
           | st.text(max_size=6) | st.binary(max_size=4)
           | st.decimals(allow_nan=False, allow_infinity=False)
           | st.builds(lambda m, e: Decimal(m).scaleb(e), st.integers(-(2**70), 2**70),
                       st.integers(-400, 400)))
_label = st.sampled_from([-3, -2, 0, 1, 2, 3, 4, 6, 8])


def _outcome(fn: Any, payload: bytes) -> Any:
    try:
        return [repr(r) for r in fn("s", "gw", payload)]
    except Poison as exc:
        return ("poison", exc.reason)


def _same(payload: bytes) -> None:
    assert _outcome(readings_from_pack, payload) == _outcome(reference_readings, payload)


@settings(max_examples=300, deadline=None)
@given(_frames, st.booleans())
def test_fast_path_equals_the_reference_on_gateway_packs(frames: list[FrameRecord],
                                                         compact: bool) -> None:
    payload = cbor2.dumps(pack_records(frames)) if compact else encode_pack(frames)
    _same(payload)
    assert len(readings_from_pack("s", "gw", payload)) == len(frames)


@settings(max_examples=500, deadline=None)
@given(_frames, st.lists(st.tuples(st.integers(0, 60), _label, _scalar), max_size=4),
       st.lists(st.integers(0, 60), max_size=2))
def test_fast_path_equals_the_reference_on_altered_packs(
        frames: list[FrameRecord], edits: list[tuple[int, int, Any]], drops: list[int]) -> None:
    records = pack_records(frames)
    for i, label, value in edits:  # a field set, replaced (a tag-4 time, a string value, ...)
        records[i % len(records)][label] = value
    for i in drops:
        if len(records) > 1:
            del records[i % len(records)]
    _same(cbor2.dumps(records))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.builds(cbor2.dumps, st.recursive(
    _scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(_label, c, max_size=3),
    max_leaves=8)))
def test_fast_path_equals_the_reference_on_any_bytes(payload: bytes) -> None:
    _same(payload)


def test_a_decimal_fraction_is_its_nearest_double_without_a_decimal() -> None:
    fr = FrameRecord(7, 3, 1, {3: 100_007, 5: 3659}, 1_700_000_000.5, -70)
    (r,) = readings_from_pack("s", "gw", encode_pack([fr]))
    assert r.values["bat"] == 3.659 and type(r.values["bat"]) is float
    assert r.values["vol"] == float(Decimal("100.007"))
    far = cbor2.dumps([{-2: "urn:dev:org:32473-00000", 0: "007:fc", 2: 1,
                        -3: Decimal(1).scaleb(-350)},
                       {0: "007:bat", 1: "V", 2: Decimal(3).scaleb(400)}])
    _same(far)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["urn:dev:org:32473-00000", "urn:dev:org:32473-0a1b2", "urn:dev:org:32473-0A1B2",
                        "urn:dev:org:32473-0a1b", "urn:dev:org:32473-0a1b2x", "urn:dev:org:32473-+a1b2"]),
       st.sampled_from(["000:", "00a:", "00A:", "0g0:", "000;", "00", "abc:", "fff:"]),
       st.text(alphabet="fcAZaz09_.-@:\n é", max_size=5))
def test_fast_names_equal_the_regex(bn: str, prefix: str, short: str) -> None:
    """The regex-free name resolution decides what NAME_RE decides, for good and bad names."""
    for n in (prefix + short, prefix + "fc"):
        _same(cbor2.dumps([{-2: bn, 0: prefix + "fc", 2: 1}, {0: n, 2: 5}]))
