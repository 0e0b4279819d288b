"""Protocol v1: golden vectors on both sides, codec properties, and the gateway's rejections."""

from __future__ import annotations

import functools
import io
import json
import re
from pathlib import Path

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from simulator.firmware_loader import firmware_module
from urbansense.wire import framing, senml, senml_reader
from urbansense.wire.errors import FrameError
from urbansense.wire.protocol import (
    REASONS,
    SERIAL_MAX_FRAME,
    NodeKeys,
    Uplink,
    encode_ack,
    parse_header,
    reconstruct_fcnt,
    verify_uplink,
)
from urbansense.wire.quantities import QUANTITIES

us_aes = firmware_module("us_aes")
us_cbor = firmware_module("us_cbor")
us_cobs = firmware_module("us_cobs")
us_crypto = firmware_module("us_crypto")
us_proto = firmware_module("us_proto")

ROOT = Path(__file__).resolve().parents[1]


VECTORS = ROOT / "tests" / "vectors"
UPLINKS = json.loads((VECTORS / "uplink.json").read_text())
ACKS = json.loads((VECTORS / "ack.json").read_text())
AES = json.loads((VECTORS / "aes.json").read_text())
COBS = json.loads((VECTORS / "cobs.json").read_text())


def _verify(frame: bytes, key: bytes, last_fcnt: int | None) -> Uplink:
    return verify_uplink(NodeKeys(key), frame, parse_header(frame), last_fcnt)


# -- golden vectors, gateway side ------------------------------------------------------


@pytest.mark.parametrize("vec", UPLINKS, ids=[v["name"] for v in UPLINKS])
def test_gateway_decodes_uplink_vector(vec: dict) -> None:
    up = _verify(bytes.fromhex(vec["frame"]), bytes.fromhex(vec["key"]), vec["last_fcnt"])
    assert (up.node_id, up.fcnt, up.ftype) == (vec["node_id"], vec["fcnt"], vec["ftype"])
    assert up.readings == {k: v for k, v in vec["readings"]}


@pytest.mark.parametrize("vec", UPLINKS, ids=[v["name"] for v in UPLINKS])
def test_gateway_unwraps_serial_vector(vec: dict) -> None:
    packet = bytes.fromhex(vec["serial"])
    assert packet.endswith(b"\x00") and b"\x00" not in packet[:-1]
    assert framing.unwrap(packet[:-1]) == bytes.fromhex(vec["frame"])


@pytest.mark.parametrize("vec", ACKS, ids=[v["name"] for v in ACKS])
def test_gateway_encodes_ack_vector(vec: dict) -> None:
    cmds = {k: v for k, v in vec["commands"]} if vec["commands"] else None
    frame = encode_ack(NodeKeys(bytes.fromhex(vec["key"])), vec["node_id"], vec["dcnt"], vec["acked_fcnt"], cmds)
    assert frame.hex() == vec["frame"]
    assert framing.wrap(frame).hex() == vec["serial"]


def test_ble_budget_every_kind_fits_legacy_advertising() -> None:
    for vec in UPLINKS:
        if vec["name"].startswith(("serial_", "status_serial")):
            continue
        # [len][0xFF][company id LE][frame] must fit the 31-byte legacy advertisement.
        assert 2 + 2 + vec["length"] <= 31, vec["name"]
    assert max(v["length"] for v in UPLINKS if v["name"] == "ble_max_body") == 27


def test_counter_wrap_vectors_reconstruct() -> None:
    by_name = {v["name"]: v for v in UPLINKS}
    assert bytes.fromhex(by_name["counter_wrap_10000"]["frame"])[5:7] == b"\x00\x00"
    assert _verify(bytes.fromhex(by_name["counter_wrap_10000"]["frame"]), bytes.fromhex(by_name["counter_wrap_10000"]["key"]), 0xFFFF).fcnt == 0x10000


# -- golden vectors, firmware side on CPython (the VM run is in test_protocol_vm.py) -----


@pytest.mark.parametrize("vec", UPLINKS, ids=[v["name"] for v in UPLINKS])
def test_firmware_encodes_uplink_vector(vec: dict) -> None:
    keys = us_proto.Keys(bytes.fromhex(vec["key"]))
    readings = {k: v for k, v in vec["readings"]}
    frame = us_proto.encode_uplink(keys, vec["node_id"], vec["fcnt"], vec["ftype"], readings, us_proto.SERIAL_MAX_FRAME)
    assert frame.hex() == vec["frame"]
    assert us_cobs.wrap(frame).hex() == vec["serial"]


@pytest.mark.parametrize("vec", ACKS, ids=[v["name"] for v in ACKS])
def test_firmware_decodes_ack_vector(vec: dict) -> None:
    keys = us_proto.Keys(bytes.fromhex(vec["key"]))
    dcnt, acked, cmds = us_proto.decode_ack(keys, vec["node_id"], bytes.fromhex(vec["frame"]))
    assert (dcnt, acked) == (vec["dcnt"], vec["acked_fcnt"])
    assert cmds == ({k: v for k, v in vec["commands"]} if vec["commands"] else None)


@pytest.mark.parametrize("vec", ACKS, ids=[v["name"] for v in ACKS])
def test_firmware_rejects_tampered_ack(vec: dict) -> None:
    keys = us_proto.Keys(bytes.fromhex(vec["key"]))
    frame = bytearray(bytes.fromhex(vec["frame"]))
    for i in range(len(frame)):
        frame[i] ^= 0x01
        with pytest.raises(ValueError):
            us_proto.decode_ack(keys, vec["node_id"], bytes(frame))
        frame[i] ^= 0x01


def _signed_down(key: bytes, head: bytes, dcnt: int) -> bytes:
    """``head`` with the MIC the gateway's keys give it (direction down, counter ``dcnt``)."""
    return head + NodeKeys(key).mic(1, dcnt, head)


@pytest.mark.parametrize("first", [0x28, 0x10, 0x12, 0x19, 0x08])
def test_firmware_rejects_a_signed_frame_that_is_no_v1_ack(first: int) -> None:
    """The node reads only a v1 ack: a later version's ack or another frame type carrying a
    right MIC is not taken for one (the MIC alone would let it through)."""
    key, node_id, dcnt, acked = bytes(range(16)), 0x0A0B0C0D, 5, 9
    head = bytes((first,)) + node_id.to_bytes(4, "little") + dcnt.to_bytes(4, "little") + acked.to_bytes(4, "little")
    with pytest.raises(ValueError):
        us_proto.decode_ack(us_proto.Keys(key), node_id, _signed_down(key, head, dcnt))
    ack = _signed_down(key, b"\x18" + head[1:], dcnt)  # the same with the v1 ack header is read
    assert us_proto.decode_ack(us_proto.Keys(key), node_id, ack) == (dcnt, acked, None)


@pytest.mark.parametrize("acked_bytes", [0, 1, 2, 3])
def test_firmware_rejects_a_signed_ack_shorter_than_its_header(acked_bytes: int) -> None:
    """An ack is at least 13 header + 4 MIC bytes (PROTOCOL.md): a shorter frame with a right
    MIC over what it has is refused, not read with the MIC as its acknowledged counter."""
    key, node_id, dcnt = bytes(range(16)), 0x0A0B0C0D, 5
    head = b"\x18" + node_id.to_bytes(4, "little") + dcnt.to_bytes(4, "little") + bytes(acked_bytes)
    with pytest.raises(ValueError):
        us_proto.decode_ack(us_proto.Keys(key), node_id, _signed_down(key, head, dcnt))


@pytest.mark.parametrize("vec", UPLINKS, ids=[v["name"] for v in UPLINKS])
def test_firmware_frame_limit_is_inclusive(vec: dict) -> None:
    """A frame of exactly max_len bytes goes out (the fullest BLE frame is 27 bytes, the
    ble_max_body vector); one byte less of room refuses it."""
    keys = us_proto.Keys(bytes.fromhex(vec["key"]))
    readings = {k: v for k, v in vec["readings"]}
    args = (keys, vec["node_id"], vec["fcnt"], vec["ftype"], readings)
    assert us_proto.encode_uplink(*args, vec["length"]).hex() == vec["frame"]
    with pytest.raises(ValueError):
        us_proto.encode_uplink(*args, vec["length"] - 1)


@pytest.mark.parametrize(("key", "plain", "cipher"), AES)
def test_aes_fallback_matches_fips197(key: str, plain: str, cipher: str) -> None:
    assert us_aes.AES128(bytes.fromhex(key)).encrypt(bytes.fromhex(plain)).hex() == cipher


@pytest.mark.parametrize(("data", "encoded"), COBS)
def test_cobs_vectors_both_sides(data: str, encoded: str) -> None:
    raw, enc = bytes.fromhex(data), bytes.fromhex(encoded)
    assert us_cobs.cobs_encode(raw) == enc == framing.cobs_encode(raw)
    assert us_cobs.cobs_decode(enc) == raw == framing.cobs_decode(enc)


def test_crc16_check_value_both_sides() -> None:
    assert us_cobs.crc16(b"123456789") == framing.crc16(b"123456789") == 0x29B1


# -- properties ------------------------------------------------------------------------

keys16 = st.binary(min_size=16, max_size=16)
u32 = st.integers(0, 0xFFFFFFFF)
# Bodies of PROTOCOL.md section 3: quantity 0 a boolean, every other an integer.
readings_st = st.builds(
    lambda occupied, rest: {**occupied, **rest},
    st.dictionaries(st.just(0), st.booleans(), max_size=1),
    st.dictionaries(st.integers(1, 23), st.integers(-(2**31), 2**32 - 1), max_size=5),
)


@given(key=keys16, node_id=u32, fcnt=u32, ftype=st.sampled_from([0, 1, 2]), readings=readings_st)
def test_roundtrip_firmware_to_gateway(key: bytes, node_id: int, fcnt: int, ftype: int, readings: dict[int, int | bool]) -> None:
    try:
        frame = us_proto.encode_uplink(us_proto.Keys(key), node_id, fcnt, ftype, readings, SERIAL_MAX_FRAME)
    except ValueError:
        assert len(us_cbor.encode(readings)) + 11 > SERIAL_MAX_FRAME
        return
    up = _verify(frame, key, max(0, fcnt - 100) if fcnt % 2 else None if fcnt < 0x10000 else fcnt - 1)
    assert (up.node_id, up.fcnt, up.ftype, up.readings) == (node_id, fcnt, ftype, readings)
    assert framing.unwrap(framing.wrap(frame)[:-1]) == frame == us_cobs.unwrap(us_cobs.wrap(frame)[:-1])


@given(key=keys16, node_id=u32, dcnt=u32, acked=u32,
       cmds=st.one_of(st.none(), st.dictionaries(st.integers(1, 23), st.one_of(u32, st.lists(st.integers(0, 100), max_size=4)), min_size=1, max_size=4)))
def test_roundtrip_gateway_ack_to_firmware(key: bytes, node_id: int, dcnt: int, acked: int, cmds: dict | None) -> None:
    frame = encode_ack(NodeKeys(key), node_id, dcnt, acked, cmds)
    assert us_proto.decode_ack(us_proto.Keys(key), node_id, frame) == (dcnt, acked, cmds)
    assert frame == us_proto.encode_ack(us_proto.Keys(key), node_id, dcnt, acked, cmds)


@given(obj=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.binary(max_size=40), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.integers(-1000, 1000), inner, max_size=4)),
    max_leaves=12,
))
def test_firmware_cbor_matches_cbor2(obj: object) -> None:
    enc = us_cbor.encode(obj)
    assert cbor2.loads(enc) == obj
    assert us_cbor.decode(cbor2.dumps(obj, canonical=True)) == obj


def _nesting(v: object) -> int:
    """How deep the firmware decoder recurses for v: 0 for a scalar or an empty container."""
    kids = list(v) + list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else []
    return 1 + max(map(_nesting, kids)) if kids else 0


def _same(a: object, b: object) -> bool:
    """Equal with the types too (True == 1 in Python, not in CBOR)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[attr-defined,index]
    return a == b


def _cbor2_one_item(data: bytes) -> tuple[bool, object]:
    """cbor2's reading of data as exactly one item -> (ok, value); cbor2.loads ignores a tail."""
    dec = cbor2.CBORDecoder(io.BytesIO(data))
    try:
        value = dec.decode()
    except Exception:
        return False, None
    return dec.fp.tell() == len(data), value


def _in_subset(v: object) -> bool:
    if v is None or isinstance(v, (bool, bytes, str)):
        return True
    if isinstance(v, int):
        return -(2**64) <= v < 2**64
    if isinstance(v, list):
        return all(map(_in_subset, v))
    if isinstance(v, dict):
        return all(isinstance(k, (int, str)) and not isinstance(k, bool) and _in_subset(k) and _in_subset(x)
                   for k, x in v.items())
    return False


_SUBSET = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1), st.binary(max_size=20), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.integers(-300, 300), st.text(max_size=3)), inner, max_size=3)),
    max_leaves=8,
)
_DEEP = st.integers(0, 11).map(lambda d: functools.reduce(lambda v, _: [v], range(d), 7))


@st.composite
def _cbor_like(draw: st.DrawFn) -> bytes:
    """A canonical encoding of a value, kept, cut, with a byte changed or with a tail."""
    data = cbor2.dumps(draw(st.one_of(_SUBSET, _DEEP)), canonical=True)
    how = draw(st.sampled_from(["keep", "cut", "change", "tail"]))
    if how == "cut":
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "change":
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
    return data + draw(st.binary(min_size=1, max_size=4)) if how == "tail" else data


@given(data=st.one_of(st.binary(max_size=80), _cbor_like()))
@example(data=b"\x1a\x01")  # a 4-byte head cut short
@example(data=bytes.fromhex("818181818181818101"))  # nesting 8: the deepest accepted
@example(data=bytes.fromhex("81818181818181818101"))  # nesting 9: refused
@example(data=bytes.fromhex("a1a001"))  # a map key that is a map: unhashable, refused
@example(data=bytes.fromhex("a14001"))  # a bytes key: outside the subset, refused
def test_firmware_cbor_decoder_agrees_with_cbor2_or_refuses(data: bytes) -> None:
    """The firmware decodes the bytes a downlink carries. Whatever it returns is what cbor2
    reads from the same bytes as exactly one item, nested at most 8 deep; the canonical
    encoding of any value in its subset (ints of 64 bits, bool, null, bytes, text, lists, maps
    with int or text keys, nesting up to 8) decodes to that value; anything else is a ValueError."""
    whole, model = _cbor2_one_item(data)
    try:
        got = us_cbor.decode(data)
    except ValueError:
        assert not (whole and data == cbor2.dumps(model, canonical=True) and _nesting(model) <= 8
                    and _in_subset(model)), f"refused the canonical encoding of {model!r}"
        return
    assert whole and _same(got, model) and _nesting(got) <= 8 and _in_subset(got)


@given(key=keys16, node_id=u32, fcnt=u32, dcnt=u32, data=st.binary(max_size=64), direction=st.sampled_from([0, 1]))
def test_ctr_same_keystream_both_sides(key: bytes, node_id: int, fcnt: int, dcnt: int, data: bytes, direction: int) -> None:
    enc_key, _ = us_crypto.derive_keys(key)
    fw = us_crypto.ctr_xor(enc_key, direction, node_id, fcnt, dcnt, data)
    assert fw == NodeKeys(key).ctr(direction, node_id, fcnt, dcnt, data)
    assert us_crypto.ctr_xor(enc_key, direction, node_id, fcnt, dcnt, fw) == data


@pytest.mark.parametrize("vec", UPLINKS, ids=[v["name"] for v in UPLINKS])
def test_every_bit_flip_is_rejected_with_a_reason(vec: dict) -> None:
    frame = bytearray(bytes.fromhex(vec["frame"]))
    key = bytes.fromhex(vec["key"])
    for bit in range(len(frame) * 8):
        frame[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameError) as info:
            _verify(bytes(frame), key, vec["last_fcnt"])
        assert info.value.reason in REASONS
        frame[bit // 8] ^= 1 << (bit % 8)


@pytest.mark.parametrize("vec", UPLINKS, ids=[v["name"] for v in UPLINKS])
def test_every_truncation_is_rejected(vec: dict) -> None:
    frame = bytes.fromhex(vec["frame"])
    for n in range(len(frame)):
        with pytest.raises(FrameError):
            _verify(frame[:n], bytes.fromhex(vec["key"]), vec["last_fcnt"])


@settings(max_examples=500)
@given(data=st.binary(max_size=100), last=st.one_of(st.none(), u32))
def test_random_bytes_only_ever_raise_frame_error(data: bytes, last: int | None) -> None:
    try:
        _verify(data, bytes(16), last)
    except FrameError as exc:
        assert exc.reason in REASONS


def test_forged_body_with_valid_mic_is_malformed_not_a_crash() -> None:
    """A node with a valid key sending a float body: counted as malformed_body."""
    key = bytes(16)
    keys = NodeKeys(key)
    body = cbor2.dumps({1: 1.5})
    head = bytes((0x10,)) + (7).to_bytes(4, "little") + (3).to_bytes(2, "little")
    signed = head + keys.ctr(0, 7, 3, 0, body)
    frame = signed + keys.mic(0, 3, signed)
    with pytest.raises(FrameError) as info:
        _verify(frame, key, None)
    assert info.value.reason == "malformed_body"


@given(last=u32, ahead=st.integers(-32768, 32767))
@example(last=0x10000, ahead=-0x8000)  # exactly half-way: read as behind, never as ahead
def test_counter_reconstruction_nearest(last: int, ahead: int) -> None:
    true = last + ahead
    if 0 <= true <= 0xFFFFFFFF:
        assert reconstruct_fcnt(last, true & 0xFFFF) == true


@given(data=st.binary(max_size=600), cut=st.lists(st.integers(0, 600), max_size=6))
# COBS blocks end at 254 data bytes (code 0xFF, no implied zero): runs at and past that length,
# which random bytes seldom make.
@example(data=b"\x01" * 254 + b"\x00" + b"\x02" * 300 + b"\x00", cut=[])
def test_cobs_roundtrip_and_splitter(data: bytes, cut: list[int]) -> None:
    enc = framing.cobs_encode(data)
    assert b"\x00" not in enc and enc == us_cobs.cobs_encode(data)
    assert framing.cobs_decode(enc) == data
    frames = [data[:60] or b"x", data[60:120] or b"y"]
    stream = framing.wrap(frames[0]) + framing.wrap(frames[1])
    splitter = framing.PacketSplitter()
    packets: list[bytes] = []
    prev = 0
    for c in [*sorted(set(cut)), len(stream)]:
        packets += splitter.feed(stream[prev:c])
        prev = max(prev, c)
    assert [framing.unwrap(p) for p in packets] == frames


@given(data=st.binary(max_size=300))
def test_serial_unwrap_random_bytes(data: bytes) -> None:
    for packet in framing.PacketSplitter().feed(data):
        try:
            framing.unwrap(packet)
        except FrameError as exc:
            assert exc.reason in REASONS


# -- SenML -----------------------------------------------------------------------------


def test_rfc8428_section6_example_decodes() -> None:
    vec = json.loads((VECTORS / "rfc8428_section6.json").read_text())
    data = bytes.fromhex(vec["cbor"])
    assert len(data) == 195 and data.startswith(bytes.fromhex("87a721781b"))
    got = [(r.name, r.time_s, r.unit, r.value) for r in senml_reader.read_pack(data)]
    assert len(got) == len(vec["records"])
    for (name, t, unit, value), (ename, et, eunit, evalue) in zip(got, vec["records"], strict=True):
        assert (name, unit) == (ename, eunit)
        assert t == pytest.approx(et, abs=1e-6)
        assert value == pytest.approx(evalue)


@given(frames=st.lists(st.tuples(u32, u32, st.sampled_from([0, 1, 2]), readings_st, st.floats(1e9, 2e9), st.one_of(st.none(), st.integers(-120, 0))), max_size=8))
def test_senml_pack_roundtrip(frames: list) -> None:
    recs = [senml.FrameRecord(n, c, t, r, ts, rssi) for n, c, t, r, ts, rssi in frames]
    pack = senml.encode_pack(recs)
    decoded = senml_reader.frames_from_pack(pack)
    assert [(n, c) for n, c, _ in decoded] == [(r.node_id, r.fcnt) for r in recs]
    resolved = senml_reader.read_pack(pack)
    assert all(r.name.startswith(senml.URN_PREFIX) for r in resolved)
    for rec, (_, _, values) in zip(recs, decoded, strict=True):
        for key, raw in rec.readings.items():
            q = QUANTITIES.get(key)
            name = q.senml_name if q else f"q{key}"
            if q is None or q.boolean:
                assert values[name] == (bool(raw) if q else raw)
            else:  # exact: the nearest double of the decimal value, an int when integral
                assert values[name] == q.senml_value(raw)
                assert type(values[name]) is type(q.senml_value(raw))


# -- the spec and the code agree -------------------------------------------------------


def test_protocol_md_quantity_table_matches_code() -> None:
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| `(\w+)` \| ([^|]+) \|", text, re.M)
    assert rows, "quantity table missing from docs/PROTOCOL.md"
    table = {int(k): (field, name, unit.strip()) for k, field, name, unit in rows}
    assert set(table) == set(QUANTITIES)
    for key, q in QUANTITIES.items():
        assert table[key] == (q.field, q.senml_name, q.senml_unit or "-"), key
        assert getattr(us_proto, "Q_" + q.field.upper()) == key


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=256),
                 st.builds(cbor2.dumps, st.recursive(
                     st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                         st.integers(-8, 8) | st.text(max_size=4), inner, max_size=4),
                     max_leaves=12))))
def test_senml_reader_turns_any_garbage_into_value_error(data: bytes) -> None:
    """A consumer reads packs off the broker: a broken one is one ValueError, never a crash."""
    try:
        senml_reader.frames_from_pack(data)
    except ValueError:
        pass


def test_a_counter_that_would_be_below_zero_is_taken_as_its_16_bits() -> None:
    assert reconstruct_fcnt(5, 0xFFFF) == 0xFFFF  # nearest would be -1: no counter is negative


def _uplink(fcnt: int, key: bytes = bytes(range(16))) -> bytes:
    return us_proto.encode_uplink(us_proto.Keys(key), 7, fcnt, 0, {5: 3600}, SERIAL_MAX_FRAME)  # type: ignore[no-any-return]


def test_a_node_unheard_for_up_to_three_rollovers_is_recognised_and_not_four() -> None:
    """PROTOCOL.md: the MIC is retried MAX_ROLLOVERS (3) x 2^16 ahead, no further."""
    keys = NodeKeys(bytes(range(16)))
    f3 = _uplink(3 * 0x10000 + 5)
    up = verify_uplink(keys, f3, parse_header(f3), 5)
    assert (up.fcnt, up.readings, up.frame, parse_header(f3).version) == (3 * 0x10000 + 5, {5: 3600}, f3, 1)
    f4 = _uplink(4 * 0x10000 + 5)
    with pytest.raises(FrameError, match="bad_mic"):
        verify_uplink(keys, f4, parse_header(f4), 5)


def test_a_wrong_mic_near_the_top_of_the_counter_is_bad_mic_not_a_crash() -> None:
    """The rollover retries stop at 2^32 - 1: a counter of 2^32 is never packed."""
    f = _uplink(0xFFFF0000, key=bytes(16))
    with pytest.raises(FrameError, match="bad_mic"):
        verify_uplink(NodeKeys(bytes(range(16))), f, parse_header(f), 0xFFFF0000)
