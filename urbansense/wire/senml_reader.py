"""Reading SenML (RFC 8428) CBOR packs: the consumers' and the collector's side of section 8.

``urbansense.wire.senml`` writes the packs (and holds the labels and the record name pattern);
this module reads them back. Two readers with one contract, that anything which is not one of
our packs raises ``ValueError`` (bytes off the broker are outside bytes for a consumer):

- ``read_pack``: any RFC 8428 pack resolved record by record (section 4.6), for tests and
  for packs that are not ours;
- ``frames_from_pack``: our packs as (node, fcnt, {short name: value}), for consumers;
- ``read_frames``: our packs in one pass with units and times, no per-record objects (the
  collector's reader: a city backlog is millions of frames).

A decimal fraction (tag 4) is read as its nearest double everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import cbor2

from urbansense.compat import DATACLASS_SLOTS
from urbansense.wire.senml import BN, BT, FCNT_NAME, LABELS, NAME_RE, VB, VD, VS, N, T, U, V


@dataclass(frozen=True, **DATACLASS_SLOTS)
class Resolved:
    """A resolved SenML record (RFC 8428 section 4.6)."""

    name: str
    time_s: float | None
    unit: str | None
    value: float | int | bool | str | bytes | None


def _number(x: Any) -> int | float:
    """A SenML number: an int or a float, a decimal fraction (tag 4) read as its nearest double."""
    if isinstance(x, Decimal):
        return float(x)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"not a SenML number: {x!r}")
    return x


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
        rec = {LABELS.get(k, k) if isinstance(k, int) else k: v for k, v in raw.items()}
        bn = rec.get("bn", bn)
        bt = _number(rec.get("bt", bt))
        bu = rec.get("bu", bu)
        bv = rec.get("bv", bv)
        bs = rec.get("bs", bs)
        name = bn + rec.get("n", "")
        value: float | int | bool | str | bytes | None
        if "v" in rec:
            value = _number(rec["v"]) + (_number(bv) if bv is not None else 0)
        elif "vb" in rec:
            value = rec["vb"]
        elif "vs" in rec:
            value = rec["vs"]
        elif "vd" in rec:
            value = rec["vd"]
        elif "s" in rec:
            value = _number(rec["s"]) + (_number(bs) if bs is not None else 0)
        elif bv is not None:
            value = _number(bv)
        else:
            value = None
        t = _number(rec.get("t", 0)) + bt
        out.append(Resolved(name, t, rec.get("u", bu), value))
    return out


_T = TypeVar("_T")
# What a reader raises on bytes that are no pack of ours, short of ValueError itself.
_NOT_OURS = (cbor2.CBORError, TypeError, KeyError, AttributeError, IndexError, OverflowError,
             RecursionError, ArithmeticError)


def _outside(read: Callable[[bytes], _T], data: bytes) -> _T:
    """``read(data)`` with every failure on outside bytes raised as ValueError (the readers'
    one contract for a pack that is not ours)."""
    try:
        return read(data)
    except ValueError:
        raise
    except _NOT_OURS as exc:
        raise ValueError(f"not an urbansense SenML pack: {type(exc).__name__}: {exc}") from None


def frames_from_pack(data: bytes) -> list[tuple[int, int, dict[str, float | int | bool]]]:
    """(node_id, fcnt, {short name: value}) per frame in one of our packs; for consumers.

    A pack that is not one of ours (bytes off the broker are outside bytes for a consumer)
    raises ValueError, whatever is wrong with it."""
    return _outside(_frames_from_pack, data)


def _frames_from_pack(data: bytes) -> list[tuple[int, int, dict[str, float | int | bool]]]:
    frames: list[tuple[int, int, dict[str, float | int | bool]]] = []
    for rec in read_pack(data):
        m = NAME_RE.match(rec.name) if isinstance(rec.name, str) else None
        if m is None:
            raise ValueError(f"not an urbansense record name: {rec.name!r}")
        node_id, name = int(m.group(1), 16), m.group(2)
        value = rec.value
        if not isinstance(value, (bool, int, float)):
            raise ValueError(f"{rec.name}: no number or boolean value")
        if name == FCNT_NAME:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{rec.name}: a frame counter is an integer")
            frames.append((node_id, value, {}))
        elif frames and frames[-1][0] == node_id:
            frames[-1][2][name] = value
        else:
            raise ValueError(f"{rec.name}: a record outside its node's frame")
    return frames


PackFrame = tuple[int, int, float, list[tuple[str, Any, "str | None"]]]


def read_frames(data: bytes) -> list[PackFrame]:
    """(node_id, fcnt, time_s, [(short name, value, unit), ...]) per frame of one of our packs.

    The collector's reader: it resolves what our packs use (bn, bt and t for the time, n, u,
    v, vb, vs, vd; a decimal fraction as its nearest double), keeping each frame's records
    together, and like ``frames_from_pack`` refuses anything else with ValueError; one pass,
    no per-record objects (a city backlog is millions of frames)."""
    return _outside(_read_frames, data)


def _read_frames(data: bytes) -> list[PackFrame]:
    pack = cbor2.loads(data)
    if type(pack) is not list:
        raise ValueError("a SenML pack is an array")
    frames: list[PackFrame] = []
    records: list[tuple[str, Any, str | None]] = []
    bn, bt, node = "", 0.0, -1
    match = NAME_RE.match
    for raw in pack:
        if type(raw) is not dict:
            raise ValueError("a SenML record is a map")
        if BN in raw:
            bn = raw[BN]
        if BT in raw:
            bt = _number(raw[BT])
        m = match(bn + raw.get(N, ""))
        if m is None:
            raise ValueError(f"not an urbansense record name: {bn + raw.get(N, '')!r:.80}")
        node_id, name = int(m.group(1), 16), m.group(2)
        if name == FCNT_NAME:
            fcnt = raw[V]
            if type(fcnt) is not int:
                raise ValueError(f"fc {fcnt!r}")
            records = []
            frames.append((node_id, fcnt, bt + _number(raw.get(T, 0)), records))
            node = node_id
        elif node == node_id:
            value = raw[V] if V in raw else raw[VB] if VB in raw else raw[VS] if VS in raw else raw[VD]
            records.append((name, float(value) if type(value) is Decimal else value, raw.get(U)))
        else:
            raise ValueError(f"{name}: a record outside its node's frame")
    return frames
