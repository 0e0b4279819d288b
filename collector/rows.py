"""A batch of decoded messages -> the rows one transaction writes (pure, shared by both stores).

Within a batch a frame heard by several gateways becomes one ``readings`` row (the first copy
in delivery order) and one ``receptions`` row per gateway; ``node_state`` gets one row per
node, folded in frame-counter order (the latest non-null value of each column). Rows are
sorted by key so that concurrent collectors take row locks in the same order (PostgreSQL would
otherwise abort one of two crossing transactions as a deadlock).
"""

from __future__ import annotations

import hashlib
import json
import operator
from dataclasses import dataclass, field
from typing import Any, Final

from collector.decode import COLUMNS, NO_COLUMNS, GatewayNote, Reading

READING_COLUMNS: Final = ("node_id", "fcnt", "time_s", "site", "gateway_id", "stored_s",
                          *COLUMNS, "vals")
RECEPTION_COLUMNS: Final = ("node_id", "fcnt", "gateway_id", "rssi_dbm", "received_s")
STATE_VALUE_COLUMNS: Final = ("occupied", "fill_ratio", "volume_m3", "battery_v", "alarms", "flags")
STATE_COLUMNS: Final = ("node_id", "site", "last_fcnt", "last_seen_s", *STATE_VALUE_COLUMNS)
_STATE_OF: Final = operator.itemgetter(*(COLUMNS.index(c) for c in STATE_VALUE_COLUMNS))
_DUMPS: Final = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
_INF: Final = float("inf")


def vals_json(values: dict[str, Any]) -> str:
    """``values`` as compact JSON, keys sorted: what ``_DUMPS`` writes, for the common case of
    plain names and finite numbers or booleans written here (a third of the encoder's time per
    reading); anything else (a string value, a name to escape, NaN) goes to the encoder. The
    sorted order and each key's ``"name":`` are kept per set of names (a pack's frames repeat
    a handful of them), so a reading costs one lookup and its values' text."""
    keys = tuple(values)
    layout = _LAYOUTS.get(keys)
    if layout is None:
        layout = _layout(keys)
    if layout is _ENCODER:
        return _DUMPS(values)
    parts = []
    for k, pre in layout:
        v = values[k]
        t = type(v)
        if t is float and -_INF < v < _INF:
            parts.append(pre + repr(v))
        elif t is int:
            parts.append(pre + str(v))
        elif t is bool:
            parts.append(pre + ("true" if v else "false"))
        else:
            return _DUMPS(values)
    return "{" + ",".join(parts) + "}"


_ENCODER: Final[tuple[tuple[str, str], ...]] = (("", ""),)  # a sentinel, compared by identity
_LAYOUTS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}


def _layout(keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(key, '"key":') in sorted order, or ``_ENCODER`` when a key needs escaping; kept for
    at most 4,096 sets of names (a pack's names are outside bytes)."""
    if not all(k.isidentifier() and k.isascii() for k in keys):
        layout = _ENCODER
    else:
        layout = tuple((k, f'"{k}":') for k in sorted(keys))
    if len(_LAYOUTS) < 4096:
        _LAYOUTS[keys] = layout
    return layout


@dataclass(slots=True)
class Rows:
    readings: list[tuple[Any, ...]] = field(default_factory=list)
    receptions: list[tuple[Any, ...]] = field(default_factory=list)
    states: list[tuple[Any, ...]] = field(default_factory=list)
    statuses: list[tuple[Any, ...]] = field(default_factory=list)  # site, gw, online, body, t
    events: list[tuple[Any, ...]] = field(default_factory=list)  # site, gw, digest, t, body

    @property
    def offered(self) -> int:
        """Distinct (node, fcnt) in the batch."""
        return len(self.readings)


def build(readings: list[Reading], notes: list[GatewayNote], now_s: float) -> Rows:
    rows = Rows()
    # Keys as one int, node_id << 32 | fcnt (fcnt < 2**32: decode refuses more): a dict key
    # and a sort key that compare as (node_id, fcnt) do, at a fraction of a tuple's cost.
    first: dict[int, Reading] = {}
    heard: dict[tuple[int, str], Reading] = {}
    for r in readings:
        key = r.node_id << 32 | r.fcnt
        if key not in first:
            first[key] = r
        hkey = (key, r.gateway_id)
        if hkey not in heard:
            heard[hkey] = r
    state: dict[int, list[Any]] = {}
    dumps = vals_json
    out = rows.readings
    state_of = _STATE_OF
    for key in sorted(first):
        r = first[key]
        cols = r.columns
        out.append((r.node_id, r.fcnt, r.time_s, r.site, r.gateway_id, now_s, *cols, dumps(r.values)))
        s = state.get(r.node_id)
        if s is None:
            state[r.node_id] = [r.node_id, r.site, r.fcnt, r.time_s, *state_of(cols)]
        else:  # sorted by fcnt: this one is newer
            s[1], s[2], s[3] = r.site, r.fcnt, r.time_s
            if cols is not NO_COLUMNS:
                for i, v in enumerate(state_of(cols), 4):
                    if v is not None:
                        s[i] = v
    rows.receptions = [(r.node_id, r.fcnt, r.gateway_id, r.rssi_dbm, r.time_s)
                       for r in map(heard.__getitem__, sorted(heard))]
    rows.states = [tuple(state[n]) for n in sorted(state)]
    for note in notes:
        body = json.dumps(note.body, separators=(",", ":"), sort_keys=True)
        if note.leaf == "status":
            online = note.body.get("online")
            if online is None and isinstance(note.body.get("state"), str):
                online = note.body["state"] == "online"
            rows.statuses.append((note.site, note.gateway_id,
                                  bool(online) if online is not None else None, body, now_s))
        else:
            digest = hashlib.sha256(body.encode()).hexdigest()[:32]
            rows.events.append((note.site, note.gateway_id, digest, now_s, body))
    return rows
