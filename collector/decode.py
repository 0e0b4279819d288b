"""Uplink messages off the bus -> rows for the store. Pure: no I/O, never raises but ``Poison``.

A message is one of a gateway's three topics, ``urbansense/v1/<site>/<gateway>/<leaf>`` (MQTT)
or ``urbansense.v1.<site>.<gateway>.<leaf>`` (its NATS subject, the same name with dots):
``up`` is a SenML pack read through the project's own reader (``read_pack``: RFC 8428 name,
time and unit resolution), ``status`` and ``event`` are JSON objects. Each frame of a pack is
one ``Reading`` keyed by (node, frame counter); the same frame heard by two gateways arrives as
two ``Reading``s with the same key and different ``gateway_id``, and the store keeps the
reading once and both receptions.

Values are kept twice: as the pack said them (``values``, SenML name -> value, for audit and
the demo's ledger) and normalised into the typed columns the SQL views use (``fill_ratio``
from ``/`` or ``%``, volumes in m3, ...), so a producer's unit change is absorbed here.

Anything that is not one of ours raises ``Poison(reason)``: the caller dead-letters it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from urbansense.wire.senml import node_id_from_base_name, read_pack


class Poison(ValueError):
    """A message that can never be stored (retrying cannot help): dead-lettered, counted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# SenML name -> (typed column, {unit: factor to the column's unit}); None: the value as is.
_COLUMNS: Final[dict[str, tuple[str, dict[str | None, float] | None]]] = {
    "occupied": ("occupied", None),
    "fill": ("fill_ratio", {"/": 1.0, "%": 0.01}),
    "distance": ("distance_m", {"m": 1.0}),
    "volume": ("volume_m3", {"m3": 1.0, "l": 0.001}),
    "battery": ("battery_v", {"V": 1.0}),
    "temperature": ("temperature_c", {"Cel": 1.0}),
    "flow": ("flow_m3_s", {"m3/s": 1.0, "l/s": 0.001}),
    "alarms": ("alarms", None),
    "flags": ("flags", None),
}
COLUMNS: Final = tuple(c for c, _ in _COLUMNS.values())
_INT_COLUMNS: Final = frozenset({"alarms", "flags"})


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
    columns: dict[str, float | int | bool] = field(default_factory=dict)


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


def readings_from_pack(site: str, gateway_id: str, payload: bytes) -> list[Reading]:
    """One ``Reading`` per frame: a frame starts at its base record's ``fcnt``."""
    try:
        records = read_pack(payload)
    except Exception as exc:  # outside bytes: whatever the CBOR decoder raises
        raise Poison("bad_pack", f"{type(exc).__name__}: {exc}"[:200]) from None
    out: list[Reading] = []
    cur: Reading | None = None
    for rec in records:
        bn, sep, name = rec.name.rpartition(":")
        if not sep:
            raise Poison("bad_pack", f"record name {rec.name[:80]!r}")
        if name == "fcnt":
            try:
                node_id = node_id_from_base_name(bn + ":")
            except ValueError as exc:
                raise Poison("bad_pack", str(exc)[:200]) from None
            if type(rec.value) is not int or not 0 <= rec.value < 1 << 32:
                raise Poison("bad_pack", f"fcnt {rec.value!r}")
            t = rec.time_s
            if not isinstance(t, int | float) or t != t:
                raise Poison("bad_pack", f"time {t!r}")
            cur = Reading(node_id, rec.value, float(t), site, gateway_id)
            out.append(cur)
            continue
        if cur is None:
            raise Poison("bad_pack", "a record before the first frame")
        value = rec.value
        if isinstance(value, bytes):
            value = value.hex()
        if name == "rssi":
            if isinstance(value, int | float) and not isinstance(value, bool):
                cur.rssi_dbm = float(value) + 30.0 if rec.unit == "dBW" else float(value)
            continue
        cur.values[name] = value
        spec = _COLUMNS.get(name)
        if spec is None or value is None:
            continue
        column, units = spec
        if units is None:
            if column == "occupied":
                cur.columns[column] = bool(value)
            elif isinstance(value, int | float) and column in _INT_COLUMNS:
                cur.columns[column] = int(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            factor = units.get(rec.unit)
            if factor is not None:
                cur.columns[column] = float(value) * factor
    return out
