"""Uplink messages off the bus -> rows for the store. Pure: no I/O, never raises but ``Poison``.

A message is one of a gateway's three topics, ``urbansense/v1/<site>/<gateway>/<leaf>`` (MQTT)
or ``urbansense.v1.<site>.<gateway>.<leaf>`` (its NATS subject, the same name with dots):
``up`` is a SenML pack read through the wire package's reader (``read_frames``: RFC 8428
name, time and unit resolution, a frame's records kept together), ``status`` and ``event`` are JSON objects. Each frame of a pack is
one ``Reading`` keyed by (node, frame counter); the same frame heard by two gateways arrives as
two ``Reading``s with the same key and different ``gateway_id``, and the store keeps the
reading once and both receptions.

Values are kept twice: as the pack said them (``values``, SenML name -> value, for audit and
the demo's ledger) and normalised into the typed columns the SQL views use (``fill_ratio``
from ``/`` or ``%``, volumes in m3, ...), so a producer's unit change is absorbed here.

Anything that is not one of ours raises ``Poison(reason)``: the caller dead-letters it.

``readings_from_pack`` is a one-pass fast path over the decoded CBOR (issue 13: the collector's
CPU per reading): a decimal fraction (tag 4, RFC 8949 3.4.4) becomes its nearest double as
the CBOR is decoded, never a ``Decimal`` (every column and ``values`` hold doubles: the
reference reader converts it the same way), a record name is resolved once per (bn, n) in a
pack, without the regex when bn is our URN (the same decision, checked), and each frame's ``Reading`` is built as its records are read. ``reference_readings``
(``read_frames``, the wire package's reader) is what it must equal, on every pack, good or
poison: tests/test_collector_fastpath.py checks that with hypothesis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import cbor2

from urbansense.wire.senml import (
    BN,
    BT,
    FCNT_NAME,
    NAME_RE,
    URN_PREFIX,
    VB,
    VD,
    VS,
    N,
    T,
    U,
    V,
)
from urbansense.wire.senml_reader import read_frames


class Poison(ValueError):
    """A message that can never be stored (retrying cannot help): dead-lettered, counted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# SenML name -> (typed column, {unit: factor to the column's unit}); None: the value as is.
_COLUMNS: Final[dict[str, tuple[str, dict[str | None, float] | None]]] = {
    "occ": ("occupied", None),
    "fill": ("fill_ratio", {"/": 1.0, "%": 1.0}),  # "%" is the ratio too (RFC 8428 12.1)
    "dist": ("distance_m", {"m": 1.0}),
    "vol": ("volume_m3", {"m3": 1.0, "l": 0.001}),
    "bat": ("battery_v", {"V": 1.0}),
    "temp": ("temperature_c", {"Cel": 1.0}),
    "flow": ("flow_m3_s", {"m3/s": 1.0, "l/s": 0.001}),
    "alm": ("alarms", None),
    "flags": ("flags", None),
}
COLUMNS: Final = tuple(c for c, _ in _COLUMNS.values())
# name -> (its column's index in COLUMNS, units): what _readings looks up per record.
_SLOTS: Final = {name: (i, units) for i, (name, (_, units)) in enumerate(_COLUMNS.items())}
_OCCUPIED: Final = COLUMNS.index("occupied")
NO_COLUMNS: Final[tuple[None, ...]] = (None,) * len(COLUMNS)


@dataclass(slots=True)
class Reading:
    """One frame as one gateway forwarded it."""

    node_id: int
    fcnt: int
    time_s: float
    site: str
    gateway_id: str
    rssi_dbm: float | None = None
    values: dict[str, Any] = field(default_factory=dict)
    # The typed columns in COLUMNS order, None where the frame had no such value.
    columns: tuple[float | int | bool | None, ...] = NO_COLUMNS

    def column(self, name: str) -> float | int | bool | None:
        return self.columns[COLUMNS.index(name)]


@dataclass(slots=True)
class GatewayNote:
    """A gateway's status (retained, last will) or event message."""

    site: str
    gateway_id: str
    leaf: str  # "status" | "event"
    body: dict[str, Any]


def split_topic(topic: str) -> tuple[str, str, str]:
    """(site, gateway, leaf) of ``urbansense/v1/site/gw/leaf`` or ``urbansense.v1.site.gw.leaf``."""
    parts = topic.split("/") if "/" in topic else topic.split(".")
    if len(parts) != 5 or parts[0] != "urbansense" or parts[1] != "v1" or not parts[2] or not parts[3]:
        raise Poison("bad_topic", topic[:200])
    return parts[2], parts[3], parts[4]


def decode(topic: str, payload: bytes) -> list[Reading] | GatewayNote:
    site, gw, leaf = split_topic(topic)
    if leaf == "up":
        return readings_from_pack(site, gw, payload)
    if leaf in ("status", "event"):
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Poison("bad_json", str(exc)[:200]) from None
        if not isinstance(body, dict):
            raise Poison("bad_json", "not an object")
        return GatewayNote(site, gw, leaf, body)
    raise Poison("bad_topic", topic[:200])


def reference_readings(site: str, gateway_id: str, payload: bytes) -> list[Reading]:
    """One ``Reading`` per frame (``read_frames``: the wire package's reader); what
    ``readings_from_pack`` equals."""
    try:
        frames = read_frames(payload)
        return _readings(site, gateway_id, frames)
    except (ValueError, OverflowError, TypeError) as exc:  # outside bytes: a bignum time, ...
        if isinstance(exc, Poison):
            raise
        raise Poison("bad_pack", f"{type(exc).__name__}: {exc}"[:200]) from None


def _readings(site: str, gateway_id: str, frames: list[Any]) -> list[Reading]:
    out: list[Reading] = []
    slots = _SLOTS
    width = len(COLUMNS)
    for node_id, fcnt, time_s, records in frames:
        if not 0 <= fcnt < 1 << 32 or type(time_s) not in (float, int) or time_s != time_s:
            raise Poison("bad_pack", f"fcnt {fcnt!r} time {time_s!r}")
        values: dict[str, Any] = {}
        columns: list[float | int | bool | None] | None = None
        rssi: float | None = None
        for name, value, unit in records:  # names are str: read_frames resolved them
            if name == "rssi":
                if type(value) in (int, float):
                    rssi = value + 30.0 if unit == "dBW" else float(value)
                continue
            t = type(value)
            if t is bytes:
                value = value.hex()
            values[name] = value
            spec = slots.get(name)
            if spec is None or value is None:
                continue
            i, units = spec
            if units is None:
                if i == _OCCUPIED:
                    v: float | int | bool = bool(value)
                elif (t is int or t is float) and -(2**31) <= value < 2**31:  # an int4 column
                    v = int(value)
                else:
                    continue
            elif t is int or t is float:
                factor = units.get(unit)
                if factor is None:
                    continue
                v = value * factor
            else:
                continue
            if columns is None:
                columns = [None] * width
            columns[i] = v
        out.append(Reading(node_id, fcnt, float(time_s), site, gateway_id, rssi, values,
                           NO_COLUMNS if columns is None else tuple(columns)))
    return out


_POW10: Final[tuple[int, ...]] = tuple(10**k for k in range(301))


def _decimal_fraction(value: Any, immutable: bool = False) -> float:
    """Tag 4 [exponent, mantissa] as its nearest double, what float(Decimal) gives: int true
    division and int-to-float conversion round correctly, so within the bounds below the
    result is the same double; outside them the exact Decimal is built and converted."""
    if (type(value) is not list and type(value) is not tuple) or len(value) != 2:
        raise ValueError(f"a decimal fraction is [exponent, mantissa]: {value!r:.80}")
    e: int
    m: int
    e, m = value
    if type(e) is not int or type(m) is not int:
        raise ValueError(f"a decimal fraction's parts are integers: {value!r:.80}")
    if -300 <= e < 0 and m.bit_length() <= 64:
        return m / _POW10[-e]
    if 0 <= e <= 280 and m.bit_length() <= 64:
        return float(m * _POW10[e])
    return float(Decimal((0 if m >= 0 else 1, tuple(map(int, str(abs(m)))), e)))


_SEMANTIC: Final = {4: _decimal_fraction}
# Without the regex, what NAME_RE decides for bn + n when bn is "urn:dev:org:32473-" and 5
# lowercase hex digits: n is 3 of them, ":" and a short name of [A-Za-z0-9_.-]+.
_HEX: Final = frozenset("0123456789abcdef")
_LOW: Final = {f"{i:03x}:": i for i in range(0x1000)}
_SHORT_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_SHORT: set[str] = set()  # short names seen valid (at most 4,096: names are outside bytes)


def _block_high(bn: Any) -> int:
    if type(bn) is str and len(bn) == 23 and bn.startswith(URN_PREFIX) and _HEX.issuperset(bn[18:]):
        return int(bn[18:], 16) << 12
    return -1


def _short_ok(short: str) -> bool:
    if not short or not _SHORT_CHARS.issuperset(short):
        return False
    if len(_SHORT) < 4096:
        _SHORT.add(short)
    return True
_loads: Final = cbor2.loads


def readings_from_pack(site: str, gateway_id: str, payload: bytes) -> list[Reading]:
    """One ``Reading`` per frame, equal to ``reference_readings`` (the module's docstring)."""
    try:
        return _fast_readings(site, gateway_id, payload)
    except Poison:
        raise
    except (ValueError, OverflowError, TypeError, cbor2.CBORError, KeyError, AttributeError,
            IndexError, RecursionError, ArithmeticError) as exc:
        raise Poison("bad_pack", f"{type(exc).__name__}: {exc}"[:200]) from None


def _fast_readings(site: str, gateway_id: str, payload: bytes) -> list[Reading]:
    pack = _loads(payload, semantic_decoders=_SEMANTIC)
    if type(pack) is not list:
        raise ValueError("a SenML pack is an array")
    out: list[Reading] = []
    slots = _SLOTS
    width = len(COLUMNS)
    match = NAME_RE.match
    bn: Any = ""
    bt: Any = 0.0
    names: dict[Any, tuple[int, str]] = {}  # n -> (node_id, short name) under the current bn
    high = -1  # bn's node id bits when bn is our URN and its first 5 hex digits, else -1
    node = -1
    values: dict[str, Any] = {}
    columns: list[float | int | bool | None] | None = None
    rssi: float | None = None
    fcnt = 0
    time_s: Any = 0.0
    for raw in pack:
        if type(raw) is not dict:
            raise ValueError("a SenML record is a map")
        if BN in raw:
            b = raw[BN]
            if b != bn or type(b) is not type(bn):
                bn = b
                names = {}
                high = _block_high(bn)
        if BT in raw:
            bt = raw[BT]
            if type(bt) is not int and type(bt) is not float:
                raise ValueError(f"not a SenML number: {bt!r}")
        n = raw.get(N, "")
        hit = names.get(n) if type(n) is str else None
        if hit is None and high >= 0 and type(n) is str:  # bn ours: n is "3e7:bat" or not ours
            low = _LOW.get(n[:4])
            short = n[4:]
            if low is not None and (short in _SHORT or _short_ok(short)):
                hit = names[n] = (high | low, short)
        if hit is None:
            m = match(bn + n)
            if m is None:
                raise ValueError(f"not an urbansense record name: {bn + n!r:.80}")
            hit = (int(m.group(1), 16), m.group(2))
            names[n] = hit
        node_id, name = hit
        if name == FCNT_NAME:
            if node != -1:
                out.append(Reading(node, fcnt, float(time_s), site, gateway_id, rssi, values,
                                   NO_COLUMNS if columns is None else tuple(columns)))
            fcnt = raw[V]
            if type(fcnt) is not int:
                raise ValueError(f"fc {fcnt!r}")
            t = raw.get(T, 0)
            if type(t) is not int and type(t) is not float:
                raise ValueError(f"not a SenML number: {t!r}")
            time_s = bt + t
            if not 0 <= fcnt < 1 << 32 or type(time_s) not in (float, int) or time_s != time_s:
                raise Poison("bad_pack", f"fcnt {fcnt!r} time {time_s!r}")
            node = node_id
            values = {}
            columns = None
            rssi = None
            continue
        if node != node_id:
            raise ValueError(f"{name}: a record outside its node's frame")
        value = raw[V] if V in raw else raw[VB] if VB in raw else raw[VS] if VS in raw else raw[VD]
        unit = raw.get(U)
        if name == "rssi":
            if type(value) in (int, float):
                rssi = value + 30.0 if unit == "dBW" else float(value)
            continue
        vt = type(value)
        if vt is bytes:
            value = value.hex()
        values[name] = value
        spec = slots.get(name)
        if spec is None or value is None:
            continue
        i, units = spec
        if units is None:
            if i == _OCCUPIED:
                v: float | int | bool = bool(value)
            elif (vt is int or vt is float) and -(2**31) <= value < 2**31:  # an int4 column
                v = int(value)
            else:
                continue
        elif vt is int or vt is float:
            factor = units.get(unit)
            if factor is None:
                continue
            v = value * factor
        else:
            continue
        if columns is None:
            columns = [None] * width
        columns[i] = v
    if node != -1:
        out.append(Reading(node, fcnt, float(time_s), site, gateway_id, rssi, values,
                           NO_COLUMNS if columns is None else tuple(columns)))
    return out
