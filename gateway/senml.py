"""SenML (RFC 8428) in CBOR: the pack a batch becomes, and a reader for consumers and tests.

One frame becomes one base record (bn per node, bt the gateway's receive time, the frame
counter as record ``fcnt``) followed by one record per quantity; consumers deduplicate
across gateways on (bn, fcnt).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from gateway.quantities import QUANTITIES

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


@dataclass(slots=True)
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


@dataclass(slots=True, frozen=True)
class Resolved:
    """A resolved SenML record (RFC 8428 section 4.6)."""

    name: str
    time_s: float | None
    unit: str | None
    value: float | int | bool | str | bytes | None


def read_pack(data: bytes | Sequence[dict[Any, Any]]) -> list[Resolved]:
    """Resolve a SenML pack (CBOR bytes, or already-decoded records with int or str labels)."""
    pack = cbor2.loads(data) if isinstance(data, bytes | bytearray) else data
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
    """(node_id, fcnt, {senml name: value}) per frame in one of our packs; for consumers."""
    frames: list[tuple[int, int, dict[str, float | int | bool]]] = []
    for raw in cbor2.loads(data):
        if BN in raw:
            frames.append((node_id_from_base_name(raw[BN]), int(raw[V]), {}))
        elif frames:
            name = raw[N]
            frames[-1][2][name] = raw[VB] if VB in raw else raw[V]
    return frames
