"""SenML (RFC 8428) in CBOR: the pack a batch becomes (the reader is ``senml_reader``).

Plain RFC 8428 SenML-CBOR (docs/PROTOCOL.md section 8): every record resolves to a name
``urn:dev:org:32473-<node id, 8 hex>:<short name>``, a time, a recommended unit and a value.
A frame is a record ``fc`` (its counter; consumers deduplicate across gateways on (node, fc))
and one record per quantity. What makes it small, all base fields used as RFC 8428 section 4.1
defines them:

- bn carries the URN and the node id's first 5 hex digits, so nodes numbered in blocks of
  4,096 share it; each record's name carries the other 3 (``3e7:bat``). bn is written in a
  frame's first record only when it differs from the previous frame's (and in a pack's first);
- bt is the gateway's receive time in whole seconds, written only when the second changes;
- values are integers when integral; a reading scaled by a power of ten is otherwise an exact
  decimal fraction (tag 4, allowed by RFC 8428 section 6: 3659 mV is 3659e-3 V, which reads
  as the double nearest 3.659); any other ratio (flow: l/h to m3/s) is the nearest double.
"""

from __future__ import annotations

import functools
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Union

import cbor2

from urbansense.compat import DATACLASS_SLOTS
from urbansense.wire.quantities import QUANTITIES, Quantity

CONTENT_TYPE: Final = "application/senml+cbor"

# RFC 8428 section 6, table 6
BVER: Final = -1
BN: Final = -2
BT: Final = -3
BU: Final = -4
BV: Final = -5
BS: Final = -6
N: Final = 0
U: Final = 1
V: Final = 2
VS: Final = 3
VB: Final = 4
S: Final = 5
T: Final = 6
UT: Final = 7
VD: Final = 8
LABELS: Final = {  # label -> its name, for readers
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}  # fmt: skip

# Private-enterprise example number (RFC 5612) until the city registers its own.
URN_PREFIX: Final = "urn:dev:org:32473-"
FCNT_NAME: Final = "fc"
RSSI_NAME: Final = "rssi"
_BLOCK_BITS: Final = 12  # the node id's low 12 bits (3 hex digits) travel in every name
# A resolved record name: groups (node id, 8 hex; short name). Readers match it, the encoders
# write it (URN_PREFIX, name_prefix).
NAME_RE: Final = re.compile(r"urn:dev:org:32473-([0-9a-f]{8}):([A-Za-z0-9_.-]+)\Z")

Number = Union[int, float, Decimal]  # noqa: UP007 - a runtime alias; the shards' PyPy 3.9 has no |


def base_name(node_id: int) -> str:
    """The resolved name of a node's records, up to the quantity name."""
    return f"{URN_PREFIX}{node_id:08x}:"


def block_base_name(node_id: int) -> str:
    """The bn of a node's block: the URN and the first 5 hex digits of the node id."""
    return f"{URN_PREFIX}{node_id >> _BLOCK_BITS:05x}"


def name_prefix(node_id: int) -> str:
    """What each record name carries of the node id: its last 3 hex digits and a colon."""
    return f"{node_id & 0xFFF:03x}:"


@dataclass(**DATACLASS_SLOTS)
class FrameRecord:
    """What the batcher holds per accepted frame."""

    node_id: int
    fcnt: int
    ftype: int
    readings: dict[int, int | bool]
    received_s: float
    rssi_dbm: int | None = None
    transport: str = ""


def time_key(received_s: float) -> float:
    """The bt a frame gets: its receive time's whole second (a non-finite time as it is)."""
    if type(received_s) is int:
        return received_s
    return math.floor(received_s) if math.isfinite(received_s) else received_s


def _power_of_ten(divisor: int) -> int:
    """k when divisor is 10**k (k >= 1), else 0."""
    k = len(str(divisor)) - 1
    return k if divisor == 10**k else 0


def _exact(n: int, divisor: int) -> Number:
    """n / divisor as SenML sends it: int, exact decimal fraction (power of ten), or double."""
    if n % divisor == 0:
        return n // divisor
    k = _power_of_ten(divisor)
    if not k:
        return n / divisor
    exponent = -k
    while n % 10 == 0:  # shortest mantissa: 3650e-3 goes as 365e-2
        n //= 10
        exponent += 1
    return Decimal(f"{n}E{exponent}")


# -- the reference encoder: records as dicts, cbor2 writes them ----------------------------


def pack_records(frames: Iterable[FrameRecord]) -> list[dict[int, Any]]:
    """A pack's records; bn and bt only where they change (RFC 8428 section 4.1)."""
    records: list[dict[int, Any]] = []
    block: int | None = None
    second: float | None = None
    for fr in frames:
        pre = name_prefix(fr.node_id)
        first: dict[int, Any] = {}
        if fr.node_id >> _BLOCK_BITS != block:
            block = fr.node_id >> _BLOCK_BITS
            first[BN] = block_base_name(fr.node_id)
        t = time_key(fr.received_s)
        if t != second or second is None:
            second = t
            first[BT] = t
        first[N] = pre + FCNT_NAME
        first[V] = fr.fcnt
        records.append(first)
        if fr.rssi_dbm is not None:
            records.append({N: pre + RSSI_NAME, U: "dBW", V: fr.rssi_dbm - 30})
        for key in sorted(fr.readings):
            value = fr.readings[key]
            q = QUANTITIES.get(key)
            if q is None:  # unknown to this gateway version: forwarded raw so nothing is lost
                records.append({N: f"{pre}q{key}", V: int(value)})
            elif q.boolean:
                records.append({N: pre + q.senml_name, VB: bool(value)})
            else:
                rec: dict[int, Any] = {N: pre + q.senml_name}
                if q.senml_unit is not None:
                    rec[U] = q.senml_unit
                rec[V] = _exact(int(value) + q.offset, q.divisor)
                records.append(rec)
    return records


def encode_compact(frames: Iterable[FrameRecord]) -> bytes:
    """The pack the gateway publishes (``join_packed`` writes the same bytes)."""
    return cbor2.dumps(pack_records(frames))


def frame_records(fr: FrameRecord) -> list[dict[int, Any]]:
    """A lone frame's records: its first sets bn and bt."""
    return pack_records([fr])


def encode_pack(frames: Iterable[FrameRecord]) -> bytes:
    """Frames each on their own (each sets bn and bt): larger, as valid (``join_frames``)."""
    return cbor2.dumps([r for fr in frames for r in frame_records(fr)])


# -- the batcher's encoder -----------------------------------------------------------------
# cbor2.dumps costs more per call than a frame's few records take to write, and the batcher
# needs each frame's size as it arrives. A frame's records are written once, from byte
# templates, all but the head of its first record (map head, bn, bt), which depends on the
# frame before it; join_frames writes the heads. The bytes are encode_pack's, pinned by
# tests/test_gw_perf_invariants.py.

_TINY: Final = tuple(bytes((b,)) for b in range(256))
_ARG8, _ARG16, _ARG32, _ARG64 = (struct.Struct(f) for f in (">BB", ">BH", ">BI", ">BQ"))
_F64: Final = struct.Struct(">Bd")
_UINT, _NINT, _TEXT, _ARRAY, _MAP = 0x00, 0x20, 0x60, 0x80, 0xA0  # major types (RFC 8949 3.1)
_TRUE, _FALSE = b"\xf5", b"\xf4"
_DECIMAL: Final = b"\xc4\x82"  # tag 4, an array of two: [exponent, mantissa]


def _head(major: int, n: int) -> bytes:
    """A CBOR head in its shortest form."""
    if n < 24:
        return _TINY[major | n]
    if n < 0x100:
        return _ARG8.pack(major | 24, n)
    if n < 0x10000:
        return _ARG16.pack(major | 25, n)
    if n < 0x100000000:
        return _ARG32.pack(major | 26, n)
    return _ARG64.pack(major | 27, n)


def _num(x: float) -> bytes:
    """An int or a float as cbor2 writes it; bignums and non-finite floats go to cbor2."""
    if type(x) is float:
        return _F64.pack(0xFB, x) if math.isfinite(x) else cbor2.dumps(x)
    if 0 <= x < 24:
        return _TINY[int(x)]
    if 0 <= x < 1 << 64:
        return _head(_UINT, int(x))
    if -(1 << 64) <= x < 0:
        return _head(_NINT, -1 - int(x))
    return cbor2.dumps(x)


def _text(s: str) -> bytes:
    b = s.encode()
    return _head(_TEXT, len(b)) + b


_UINT8: Final = tuple(_num(i) for i in range(0x100))
_PREFIX_BYTES: Final = tuple(f"{i:03x}:".encode() for i in range(0x1000))
_F64_PACK: Final = _F64.pack
_isfinite: Final = math.isfinite
_NAME_PRE_LEN: Final = 4  # len("3e7:")


def _named(name: str) -> tuple[bytes, bytes]:
    """(bytes before the node's 3 hex digits, the name after them) of ``n: "3e7:<name>"``."""
    return _num(N) + _head(_TEXT, _NAME_PRE_LEN + len(name.encode())), name.encode()


@functools.lru_cache(maxsize=1024)
def _bn_entry(block: int) -> bytes:
    return _num(BN) + _text(f"{URN_PREFIX}{block:05x}")


_FC_PRE, _FC_NAME = _named(FCNT_NAME)
_FC_POST: Final = _FC_NAME + _num(V)
_RSSI_PRE, _RSSI_NAME = _named(RSSI_NAME)
_RSSI_POST: Final = _RSSI_NAME + _num(U) + _text("dBW") + _num(V)
_RSSI_VALUES: Final = {dbm: _num(dbm - 30) for dbm in range(-160, 40)}
_BT: Final = _num(BT)

_AS_BOOL, _AS_INT, _AS_EXACT = 0, 1, 2  # how a quantity's wire integer becomes its value


def _template(q: Quantity) -> tuple[bytes, bytes, int, int, int, int]:
    """(map head and the name's head, the rest up to the value, _AS_*, offset, divisor, k)."""
    pre, name = _named(q.senml_name)
    if q.boolean:
        return b"\xa2" + pre, name + _num(VB), _AS_BOOL, 0, 1, 0
    unit = b"" if q.senml_unit is None else _num(U) + _text(q.senml_unit)
    head = b"\xa3" if unit else b"\xa2"
    kind = _AS_INT if q.divisor == 1 else _AS_EXACT
    return head + pre, name + unit + _num(V), kind, q.offset, q.divisor, _power_of_ten(q.divisor)


_TEMPLATES: Final = {key: _template(q) for key, q in QUANTITIES.items()}
_EXPONENTS: Final = tuple(_DECIMAL + _num(-k) for k in range(24))  # tag 4 and its exponent, -k


def _exact_bytes(n: int, divisor: int, k: int) -> bytes:
    """_exact(n, divisor) as encode_pack writes it; k: divisor is 10**k (0: it is not)."""
    if n % divisor == 0:
        n //= divisor
        return _UINT8[n] if 0 <= n < 0x100 else _num(n)
    if not k:
        return _F64_PACK(0xFB, n / divisor)
    while n % 10 == 0:
        n //= 10
        k -= 1
    return _EXPONENTS[k] + (_UINT8[n] if 0 <= n < 0x100 else _num(n))


def encode_frame_body(fr: FrameRecord) -> tuple[bytes, int]:
    """The frame's records but the head of the first, and how many records that is.

    The batcher's hot path: the common values are written inline, anything else through
    ``_num``, which defers to cbor2.
    """
    pre = _PREFIX_BYTES[fr.node_id & 0xFFF]
    fcnt = fr.fcnt
    out = _FC_PRE + pre + _FC_POST + (_UINT8[fcnt] if 0 <= fcnt < 0x100 else _num(fcnt))
    records = 1
    rssi = fr.rssi_dbm
    if rssi is not None:
        out += b"\xa3" + _RSSI_PRE + pre + _RSSI_POST + (_RSSI_VALUES.get(rssi) or _num(rssi - 30))
        records = 2
    readings = fr.readings
    for key in sorted(readings):
        value = readings[key]
        tpl = _TEMPLATES.get(key)
        if tpl is None:  # unknown to this gateway version: forwarded raw
            out += b"\xa2" + _named(f"q{key}")[0] + pre + f"q{key}".encode() + _num(V) + _num(int(value))
            continue
        head, post, kind, offset, divisor, k = tpl
        if kind == _AS_BOOL:
            out += head + pre + post + (_TRUE if value else _FALSE)
        elif kind == _AS_INT:
            n = int(value) + offset
            out += head + pre + post + (_UINT8[n] if 0 <= n < 0x100 else _num(n))
        else:
            out += head + pre + post + _exact_bytes(int(value) + offset, divisor, k)
    return out, records + len(readings)


def frame_key(fr: FrameRecord) -> tuple[int, float]:
    """(block, bt) of a frame: its first record writes each that differs from the frame before."""
    return fr.node_id >> _BLOCK_BITS, time_key(fr.received_s)


def frame_head(key: tuple[int, float], before: tuple[int, float] | None) -> bytes:
    """The head of a frame's first record, after the frame whose key is ``before``."""
    block, second = key
    new_block = before is None or block != before[0]
    new_second = before is None or second != before[1]
    if new_block:
        if new_second:
            return b"\xa4" + _bn_entry(block) + _BT + _num(second)
        return b"\xa3" + _bn_entry(block)
    return (b"\xa3" + _BT + _num(second)) if new_second else b"\xa2"


def join_packed(parts: Iterable[tuple[tuple[int, float], bytes]], records: int) -> bytes:
    """The compact pack from (frame_key, encode_frame_body) in order (``encode_compact``)."""
    out = [_head(_ARRAY, records)]
    before = None
    for key, data in parts:
        out.append(frame_head(key, before))
        out.append(data)
        before = key
    return b"".join(out)


def encode_frame(fr: FrameRecord) -> tuple[bytes, int]:
    """A lone frame's records (its head sets bn and bt), and how many records that is."""
    body, n = encode_frame_body(fr)
    return frame_head(frame_key(fr), None) + body, n


def frame_bytes(packed: tuple[bytes, int]) -> int:
    """Bytes of ``encode_frame``'s records alone as one CBOR array."""
    data, records = packed
    return len(_head(_ARRAY, records)) + len(data)


def join_frames(parts: Iterable[bytes], records: int) -> bytes:
    """A pack from lone frames written by ``encode_frame`` (``encode_pack``)."""
    return _head(_ARRAY, records) + b"".join(parts)
