"""The body reader is exactly as strict as docs/PROTOCOL.md section 3: bodies generated from the
document's grammar are read back, and each way out of the grammar is malformed_body, also in a
frame whose MIC is valid. The firmware's encoder stays inside the grammar."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.firmware_loader import firmware_module
from urbansense.wire.body import decode_body
from urbansense.wire.errors import FrameError
from urbansense.wire.protocol import (
    DIR_UP,
    MIN_UPLINK_LEN,
    SERIAL_MAX_FRAME,
    T_REPORT,
    VERSION,
    NodeKeys,
    parse_header,
    verify_uplink,
)

us_cbor = firmware_module("us_cbor")
KEY = bytes(range(16))
NODE_ID = 0x0A0B0C0D
_LONG = {1: 24, 2: 25, 4: 26, 8: 27}  # following bytes -> additional information


def head(major: int, n: int, size: int | None = None) -> bytes:
    """A CBOR head; ``size`` forces that many following bytes (0: in the initial byte)."""
    if size is None:
        size = next(s for s, lim in ((0, 24), (1, 1 << 8), (2, 1 << 16), (4, 1 << 32), (8, 1 << 64)) if n < lim)
    if size == 0:
        return bytes(((major << 5) | n,))
    return bytes(((major << 5) | _LONG[size],)) + n.to_bytes(size, "big")


def integer(v: int, size: int | None = None) -> bytes:
    return head(0, v, size) if v >= 0 else head(1, -1 - v, size)


def value(key: int, v: int | bool) -> bytes:
    if isinstance(v, bool):
        return b"\xf5" if v else b"\xf4"
    return integer(v)


def encode(readings: dict[int, int | bool]) -> bytes:
    """The grammar's one encoding of a reading set."""
    return head(5, len(readings)) + b"".join(
        head(0, k) + value(k, v) for k, v in sorted(readings.items()))


INT = st.integers(-(2**64), 2**64 - 1)
KEYS = st.integers(1, 2**64 - 1) | st.integers(1, 40)
READINGS = st.builds(
    lambda occupied, rest: {**({0: occupied[0]} if occupied else {}), **rest},
    st.lists(st.booleans(), max_size=1),
    st.dictionaries(KEYS, INT, max_size=6),
)


def frame_with_body(body: bytes, fcnt: int = 7) -> bytes:
    """An uplink frame around any body bytes, encrypted and with a valid MIC."""
    keys = NodeKeys(KEY)
    head_ = bytes(((VERSION << 4) | T_REPORT,)) + NODE_ID.to_bytes(4, "little") + (fcnt & 0xFFFF).to_bytes(2, "little")
    signed = head_ + keys.ctr(DIR_UP, NODE_ID, fcnt, 0, body)
    return signed + keys.mic(DIR_UP, fcnt, signed)


# -- inside the grammar ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(READINGS)
def test_every_body_of_the_grammar_reads_back(readings: dict[int, int | bool]) -> None:
    assert decode_body(encode(readings)) == readings


@settings(max_examples=300, deadline=None)
@given(READINGS)
def test_the_firmware_encoder_writes_only_the_grammar(readings: dict[int, int | bool]) -> None:
    body = us_cbor.encode(readings)
    assert body == encode(readings)
    assert decode_body(body) == readings


def test_the_edges_of_the_grammar_read() -> None:
    assert decode_body(b"\xa0") == {}
    assert decode_body(encode({0: False, 23: 23, 24: 24, 255: 256, 65535: -65537})) == {
        0: False, 23: 23, 24: 24, 255: 256, 65535: -65537}
    assert decode_body(encode({1: 2**64 - 1, 2: -(2**64)})) == {1: 2**64 - 1, 2: -(2**64)}
    assert decode_body(bytes.fromhex("a3012002370338ff")) == {1: -1, 2: -24, 3: -256}
    # 23 pairs: the longest map length in the initial byte; 24: the first in a following byte
    for n in (23, 24):
        readings = {k: k for k in range(1, n + 1)}
        assert encode(readings)[:1] == (b"\xb7" if n == 23 else b"\xb8")
        assert decode_body(encode(readings)) == readings


# -- outside it: each way out, generated ----------------------------------------------------

WAYS = ("trailing", "boolean", "negative_key", "out_of_range", "duplicate", "key0_integer",
        "indefinite", "order", "non_minimal", "other_type", "not_a_map", "truncated", "reserved")
_LIMIT = {0: 24, 1: 1 << 8, 2: 1 << 16, 4: 1 << 32, 8: 1 << 64}  # following bytes -> bound


def _longer(draw: st.DrawFn, n: int) -> int | None:
    """A head size longer than the shortest one for n, or None when n needs 8 bytes."""
    shortest = next(s for s in (0, 1, 2, 4, 8) if n < _LIMIT[s])
    longer = [s for s in (1, 2, 4, 8) if s > shortest]
    return draw(st.sampled_from(longer)) if longer else None


def _map(pairs: list[tuple[int, bytes]], count: int | None = None, size: int | None = None) -> bytes:
    """A map head and the pairs in the order given (a pair: (key, key and value bytes))."""
    return head(5, len(pairs) if count is None else count, size) + b"".join(p for _, p in pairs)


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, bytes]:
    """(how it leaves the grammar, body): a body of the grammar with one thing wrong."""
    way = draw(st.sampled_from(WAYS))
    readings = draw(READINGS.filter(lambda r: way != "order" or len(r) >= 2))
    pairs = [(k, head(0, k) + value(k, v)) for k, v in sorted(readings.items())]
    free = st.integers(1, 60).filter(lambda k: k not in readings)
    if way == "trailing":
        return way, _map(pairs) + draw(st.binary(min_size=1, max_size=4))
    if way in ("boolean", "out_of_range", "other_type"):
        bad = {
            "boolean": st.sampled_from([b"\xf5", b"\xf4"]),
            "out_of_range": st.builds(lambda tag, big: tag + head(2, 9) + big.to_bytes(9, "big"),
                                      st.sampled_from([b"\xc2", b"\xc3"]), st.integers(2**64, 2**72 - 1)),
            "other_type": st.sampled_from([b"\xf6", b"\xf7", b"\xf0", b"\xf9\x3c\x00", b"\xfa\x3f\x80\x00\x00",
                                           b"\xfb" + bytes(8), b"\x61a", b"\x41\x00", b"\x80", b"\xa0", b"\xc1\x00"]),
        }[way]
        k = draw(free)
        return way, _map(sorted([*pairs, (k, head(0, k) + draw(bad))]))
    if way == "negative_key":
        return way, _map([(-1, head(1, draw(st.integers(0, 2**64 - 1))) + integer(draw(INT))), *pairs])
    if way == "duplicate":
        if not pairs:
            k = draw(free)
            pairs = [(k, head(0, k) + integer(draw(INT)))]
        k = draw(st.sampled_from([k for k, _ in pairs]))
        again = (k, head(0, k) + (value(0, draw(st.booleans())) if k == 0 else integer(draw(INT))))
        return way, _map(sorted([*pairs, again], key=lambda p: p[0]))
    if way == "key0_integer":
        return way, _map([(0, head(0, 0) + integer(draw(INT))), *(p for p in pairs if p[0] != 0)])
    if way == "indefinite":
        return way, b"\xbf" + b"".join(p for _, p in pairs) + b"\xff"
    if way == "order":
        i = draw(st.integers(0, len(pairs) - 2))
        return way, _map([*pairs[:i], pairs[i + 1], pairs[i], *pairs[i + 2:]])
    if way == "non_minimal":
        targets = [("count", 0)] + [("key", k) for k in readings] + [("value", k) for k in readings if k]
        what, k = draw(st.sampled_from(targets))
        v = readings.get(k, 0)
        n = len(pairs) if what == "count" else k if what == "key" else (v if v >= 0 else -1 - v)
        size = _longer(draw, n)
        if size is None or what == "count":
            return way, _map(pairs, size=size or draw(st.sampled_from([1, 2, 4, 8])))
        redone = head(0, k, size) + value(k, v) if what == "key" else head(0, k) + integer(int(v), size)
        return way, _map([(kk, redone if kk == k else p) for kk, p in pairs])
    if way == "not_a_map":
        return way, draw(st.sampled_from([b"", b"\x80", b"\x01", b"\x20", b"\xf5", b"\x60", b"\xc0\xa0"]))
    if way == "truncated":
        body = _map(pairs) if pairs else encode({1: 1000})
        return way, body[:draw(st.integers(0, len(body) - 1))]
    assert way == "reserved"  # additional information 28..31 where a value's head goes
    k = draw(free)
    ib = draw(st.sampled_from([0x1C, 0x1D, 0x1E, 0x1F, 0x3C, 0x3D, 0x3E, 0x3F]))
    return way, _map(sorted([*pairs, (k, head(0, k) + bytes((ib,)))]))


@settings(max_examples=500, deadline=None)
@given(malformed())
def test_every_way_out_of_the_grammar_is_malformed_body(case: tuple[str, bytes]) -> None:
    way, body = case
    with pytest.raises(FrameError) as exc:
        decode_body(body)
    assert exc.value.reason == "malformed_body", way


@settings(max_examples=300, deadline=None)
@given(malformed())
def test_a_valid_mic_does_not_make_a_malformed_body_pass(case: tuple[str, bytes]) -> None:
    way, body = case
    frame = frame_with_body(body)
    if not MIN_UPLINK_LEN <= len(frame) <= SERIAL_MAX_FRAME:
        return  # too_short or too_long before any crypto: the length checks' business
    with pytest.raises(FrameError) as exc:
        verify_uplink(NodeKeys(KEY), frame, parse_header(frame), None)
    assert exc.value.reason == "malformed_body", way


# -- one byte-literal regression per defect found from outside -------------------------------


@pytest.mark.parametrize(("body", "why"), [
    ("a1010200", "a byte after the map"),
    ("a101f5", "a boolean for a quantity other than 0"),
    ("a12001", "a negative key"),
    ("a101c249010000000000000000", "an integer beyond 2^64 (a bignum)"),
    ("a201020103", "the same key twice"),
    ("a10001", "key 0 as an integer reading"),
    ("bf0102ff", "an indefinite-length map"),
    ("a202010101", "keys out of order"),
    ("a1011801", "a non-minimal integer"),
    ("b8010101", "a non-minimal map length"),
    ("bc" + "00" * 16, "a reserved map length (additional information 28)"),
])
def test_defects_found_from_outside(body: str, why: str) -> None:
    data = bytes.fromhex(body)
    with pytest.raises(FrameError, match="malformed_body"):
        decode_body(data)
    with pytest.raises(FrameError, match="malformed_body"):
        verify_uplink(NodeKeys(KEY), frame_with_body(data), parse_header(frame_with_body(data)), None)
