"""SenML (RFC 8428) in CBOR: the pack a batch becomes, and a reader for consumers and tests.

One frame becomes one base record (bn per node, bt the gateway's receive time, the frame
counter as record ``fcnt``) followed by one record per quantity; consumers deduplicate
across gateways on (bn, fcnt).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

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
_LABELS: Final = {
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}  # fmt: skip

# Private-enterprise example number (RFC 5612) until the city registers its own.
URN_PREFIX: Final = "urn:dev:org:32473-"


def base_name(node_id: int) -> str:
    return f"{URN_PREFIX}{node_id:08x}:"


def node_id_from_base_name(bn: str) -> int:
    if not bn.startswith(URN_PREFIX) or not bn.endswith(":"):
        raise ValueError(f"not an urbansense base name: {bn!r}")
    return int(bn[len(URN_PREFIX) : -1], 16)


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


def frame_records(fr: FrameRecord) -> list[dict[int, Any]]:
    """SenML records for one frame; the first carries bn, bt and the counter."""
    records: list[dict[int, Any]] = [
        {BN: base_name(fr.node_id), BT: fr.received_s, N: "fcnt", V: fr.fcnt}
    ]
    if fr.rssi_dbm is not None:
        records.append({N: "rssi", U: "dBW", V: fr.rssi_dbm - 30})
    for key in sorted(fr.readings):
        value = fr.readings[key]
        q = QUANTITIES.get(key)
        if q is None:
            # Unknown to this gateway version: forwarded raw so nothing is lost.
            records.append({N: f"q{key}", V: int(value)})
        elif q.boolean:
            records.append({N: q.senml_name, VB: bool(value)})
        else:
            scaled: float | int = int(value) if q.scale == 1.0 and not q.offset else (
                int(value) * q.scale + q.offset
            )
            rec: dict[int, Any] = {N: q.senml_name, V: scaled}
            if q.senml_unit is not None:
                rec[U] = q.senml_unit
            records.append(rec)
    return records


def encode_pack(frames: Iterable[FrameRecord]) -> bytes:
    pack: list[dict[int, Any]] = []
    for fr in frames:
        pack.extend(frame_records(fr))
    return cbor2.dumps(pack)


# -- the batcher's encoder -----------------------------------------------------------------
# cbor2.dumps costs more per call than the few records of a frame take to write, and the batcher
# needs each frame's size as it arrives. So each frame is written once, from byte templates, and
# a pack is those bytes under one array head: the bytes cbor2.dumps gives for frame_records
# (definite lengths, shortest heads, floats as doubles), pinned by tests/test_gw_perf_invariants.py.

_TINY: Final = tuple(bytes((b,)) for b in range(256))
_ARG8, _ARG16, _ARG32, _ARG64 = (struct.Struct(f) for f in (">BB", ">BH", ">BI", ">BQ"))
_F64: Final = struct.Struct(">Bd")
_UINT, _NINT, _TEXT, _ARRAY = 0x00, 0x20, 0x60, 0x80  # major types, shifted (RFC 8949 3.1)
_TRUE, _FALSE = b"\xf5", b"\xf4"


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
    if 0 <= x < 24:  # most counts and flags: one byte, no call
        return _TINY[int(x)]
    if 0 <= x < 1 << 64:
        return _head(_UINT, int(x))
    if -(1 << 64) <= x < 0:
        return _head(_NINT, -1 - int(x))
    return cbor2.dumps(x)


def _text(s: str) -> bytes:
    b = s.encode()
    return _head(_TEXT, len(b)) + b


@functools.lru_cache(maxsize=4096)
def _base_head(node_id: int) -> bytes:
    """The base record up to its bt value: {bn: ..., bt: (the value follows)."""
    return b"\xa4" + _num(BN) + _text(base_name(node_id)) + _num(BT)


_FCNT: Final = _num(N) + _text("fcnt") + _num(V)
_RSSI: Final = b"\xa3" + _num(N) + _text("rssi") + _num(U) + _text("dBW") + _num(V)
_UNKNOWN_HEAD: Final = b"\xa2" + _num(N)


_AS_BOOL, _AS_INT, _AS_SCALED = 0, 1, 2  # how a quantity's wire integer becomes its value
# Values written without a call: CBOR unsigned integers 0..255 (counts, flags, percentages)
# and the whole RSSI record for the RSSIs a radio reports.
_UINT8: Final = tuple(_num(i) for i in range(0x100))
_RSSI_RECORDS: Final = {dbm: _RSSI + _num(dbm - 30) for dbm in range(-160, 40)}
_F64_PACK: Final = _F64.pack
_U16_PACK: Final = _ARG16.pack
_U32_PACK: Final = _ARG32.pack
_isfinite: Final = math.isfinite


def _template(q: Quantity) -> tuple[bytes, bytes, int, float, float]:
    """(bytes before the value, bytes after it, _AS_*, scale, offset) of a quantity's record."""
    if q.boolean:
        return b"\xa2" + _num(N) + _text(q.senml_name) + _num(VB), b"", _AS_BOOL, 1.0, 0.0
    unit = b"" if q.senml_unit is None else _num(U) + _text(q.senml_unit)
    before = (b"\xa3" if unit else b"\xa2") + _num(N) + _text(q.senml_name) + _num(V)
    kind = _AS_INT if q.scale == 1.0 and not q.offset else _AS_SCALED
    return before, unit, kind, q.scale, q.offset


_TEMPLATES: Final = {key: _template(q) for key, q in QUANTITIES.items()}


def encode_frame(fr: FrameRecord) -> tuple[bytes, int]:
    """The frame's records as they sit inside a pack, and how many records that is.

    Per frame and per reading (the batcher's hot path), the common values are written inline
    (no ``_num`` call): a finite float time, a 32-bit counter, a table RSSI, a scaled reading
    (a float from an int: always finite below 2**1024), an unsigned byte; anything else goes
    through ``_num``, which defers to cbor2.
    """
    t = fr.received_s
    fcnt = fr.fcnt
    out = _base_head(fr.node_id) + (
        _F64_PACK(0xFB, t) if type(t) is float and _isfinite(t) else _num(t)
    ) + _FCNT + (
        _UINT8[fcnt] if 0 <= fcnt < 0x100 else _U16_PACK(0x19, fcnt) if 0 <= fcnt < 0x10000
        else _U32_PACK(0x1A, fcnt) if 0 <= fcnt <= 0xFFFFFFFF else _num(fcnt)
    )
    records = 1
    rssi = fr.rssi_dbm
    if rssi is not None:
        out += _RSSI_RECORDS.get(rssi) or _RSSI + _num(rssi - 30)
        records = 2
    readings = fr.readings
    for key in sorted(readings):
        value = readings[key]
        tpl = _TEMPLATES.get(key)
        if tpl is None:  # unknown to this gateway version: forwarded raw
            out += _UNKNOWN_HEAD + _text(f"q{key}") + _num(V) + _num(int(value))
            continue
        before, after, kind, scale, offset = tpl
        if kind == _AS_SCALED:  # int(value): a bool multiplies the same, an int stays exact
            x = int(value) * scale + offset
            out += before + (_F64_PACK(0xFB, x) if _isfinite(x) else _num(x)) + after
        elif kind == _AS_BOOL:
            out += before + (_TRUE if value else _FALSE)
        else:
            out += before + (_UINT8[value] if 0 <= value < 0x100 else _num(int(value))) + after
    return out, records + len(readings)


def frame_bytes(packed: tuple[bytes, int]) -> int:
    """Bytes of the frame's records alone as one CBOR array (the batcher's size budget)."""
    data, records = packed
    return len(_head(_ARRAY, records)) + len(data)


def join_frames(parts: Iterable[bytes], records: int) -> bytes:
    """A pack from frames written by ``encode_frame``: one array head, then their records."""
    return _head(_ARRAY, records) + b"".join(parts)


@dataclass(frozen=True, **DATACLASS_SLOTS)
class Resolved:
    """A resolved SenML record (RFC 8428 section 4.6)."""

    name: str
    time_s: float | None
    unit: str | None
    value: float | int | bool | str | bytes | None


def read_pack(data: bytes | Sequence[dict[Any, Any]]) -> list[Resolved]:
    """Resolve a SenML pack (CBOR bytes, or already-decoded records with int or str labels)."""
    pack = cbor2.loads(data) if isinstance(data, (bytes, bytearray)) else data
    if not isinstance(pack, list):
        raise ValueError("SenML pack must be an array")
    out: list[Resolved] = []
    bn, bt, bu, bv, bs = "", 0.0, None, None, None
    for raw in pack:
        if not isinstance(raw, dict):
            raise ValueError("SenML record must be a map")
        rec = {_LABELS.get(k, k) if isinstance(k, int) else k: v for k, v in raw.items()}
        bn = rec.get("bn", bn)
        bt = rec.get("bt", bt)
        bu = rec.get("bu", bu)
        bv = rec.get("bv", bv)
        bs = rec.get("bs", bs)
        name = bn + rec.get("n", "")
        value: float | int | bool | str | bytes | None
        if "v" in rec:
            value = rec["v"] + (bv or 0)
        elif "vb" in rec:
            value = rec["vb"]
        elif "vs" in rec:
            value = rec["vs"]
        elif "vd" in rec:
            value = rec["vd"]
        elif "s" in rec:
            value = rec["s"] + (bs or 0)
        elif bv is not None:
            value = bv
        else:
            value = None
        t = rec.get("t", 0) + bt
        out.append(Resolved(name, t, rec.get("u", bu), value))
    return out


def frames_from_pack(data: bytes) -> list[tuple[int, int, dict[str, float | int | bool]]]:
    """(node_id, fcnt, {senml name: value}) per frame in one of our packs; for consumers.

    A pack that is not one of ours (bytes off the broker are outside bytes for a consumer)
    raises ValueError, whatever is wrong with it."""
    try:
        return _frames_from_pack(data)
    except ValueError:
        raise
    except (cbor2.CBORError, TypeError, KeyError, AttributeError, IndexError, OverflowError,
            RecursionError) as exc:
        raise ValueError(f"not an urbansense SenML pack: {type(exc).__name__}: {exc}") from None


def _frames_from_pack(data: bytes) -> list[tuple[int, int, dict[str, float | int | bool]]]:
    frames: list[tuple[int, int, dict[str, float | int | bool]]] = []
    pack = cbor2.loads(data)
    if not isinstance(pack, list):
        raise ValueError("a SenML pack is an array")
    for raw in pack:
        if not isinstance(raw, dict):
            raise ValueError("a SenML record is a map")
        if BN in raw:
            frames.append((node_id_from_base_name(raw[BN]), int(raw[V]), {}))
        elif frames:
            name = raw[N]
            frames[-1][2][name] = raw[VB] if VB in raw else raw[V]
    return frames


PackFrame = tuple[int, int, float, list[tuple[str, Any, "str | None"]]]


def read_frames(data: bytes) -> list[PackFrame]:
    """(node_id, fcnt, time_s, [(name, value, unit), ...]) per frame of one of our packs.

    The collector's reader: like ``read_pack`` it resolves what our packs use (bn, bt and t
    for the time, n, u, v, vb, vs, vd), keeping each frame's records together, and like
    ``frames_from_pack`` it refuses anything else with ValueError; one pass, no per-record
    objects (a city backlog is millions of frames)."""
    try:
        return _read_frames(data)
    except ValueError:
        raise
    except (cbor2.CBORError, TypeError, KeyError, AttributeError, IndexError, OverflowError,
            RecursionError) as exc:
        raise ValueError(f"not an urbansense SenML pack: {type(exc).__name__}: {exc}") from None


def _read_frames(data: bytes) -> list[PackFrame]:
    pack = cbor2.loads(data)
    if type(pack) is not list:
        raise ValueError("a SenML pack is an array")
    frames: list[PackFrame] = []
    records: list[tuple[str, Any, str | None]] = []
    bt: float = 0.0
    for raw in pack:
        if type(raw) is not dict:
            raise ValueError("a SenML record is a map")
        if BN in raw:
            bt = raw.get(BT, 0.0)
            if raw.get(N) != "fcnt":
                raise ValueError("a frame's base record carries its counter as fcnt")
            fcnt = raw[V]
            if type(fcnt) is not int:
                raise ValueError(f"fcnt {fcnt!r}")
            records = []
            frames.append((node_id_from_base_name(raw[BN]), fcnt, bt + raw.get(T, 0), records))
        elif frames:
            value = raw[V] if V in raw else raw[VB] if VB in raw else raw[VS] if VS in raw else raw[VD]
            records.append((raw[N], value, raw.get(U)))
        else:
            raise ValueError("a record before the first frame")
    return frames
