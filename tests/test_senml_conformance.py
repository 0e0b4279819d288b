"""What reaches the broker, read by a strict RFC 8428 reader written here from the RFC alone.

The reader shares nothing with urbansense.wire.senml but a generic CBOR decoder: labels
(section 6), base fields and resolution (sections 4.1, 4.5, 4.6), the name character set
(4.5.1), exactly one value (4.2), units from the registry (12.1) and the NOT RECOMMENDED ones.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
import pytest

from tests.test_gw_support import frame, make_config, wait_for

# RFC 8428 section 6, table 6 (CBOR labels) and section 12.1 (units; * = NOT RECOMMENDED).
LABELS = {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
          0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}
UNITS = set("m kg s A K cd mol Hz rad sr N Pa J W C V F Ohm S Wb T H Cel lm lx Bq Gy Sv kat "
            "m2 m3 m/s m/s2 m3/s W/m2 cd/m2 bit bit/s lat lon pH dB dBW count / %RH %EL EL "
            "1/s S/m".split())
NOT_RECOMMENDED = {"g", "l", "l/s", "Bspl", "%", "1/min", "beat/min", "beats"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*\Z")


class Strict(Exception):
    pass


def number(x: Any) -> Fraction:
    """A SenML number exactly: CBOR int, float or decimal fraction (section 6)."""
    if isinstance(x, bool):
        raise Strict(f"boolean where a number belongs: {x!r}")
    if isinstance(x, int | float):
        return Fraction(x)
    if isinstance(x, Decimal):  # tag 4 [exponent, mantissa], RFC 8949 section 3.4.4
        return Fraction(x)
    raise Strict(f"not a number: {x!r}")


def resolve(pack: Any) -> list[dict[str, Any]]:
    """RFC 8428 section 4.6: each record with its base fields applied."""
    if not isinstance(pack, list) or not pack:
        raise Strict("a pack is a non-empty array")
    base: dict[str, Any] = {}
    out = []
    for raw in pack:
        if not isinstance(raw, dict):
            raise Strict("a record is a map")
        rec: dict[str, Any] = {}
        for k, v in raw.items():
            if isinstance(k, str) and k.endswith("_"):
                raise Strict(f"must-understand label {k}")
            if k not in LABELS:
                raise Strict(f"label {k!r} not in section 6")  # none of ours is unknown
            rec[LABELS[k]] = v
        if "bver" in rec and (type(rec["bver"]) is not int or rec["bver"] > 10):
            raise Strict("bver")
        for b in ("bn", "bt", "bu", "bv", "bs"):
            if b in rec:
                base[b] = rec[b]
        values = [f for f in ("v", "vs", "vb", "vd") if f in rec]
        if len(values) != 1 and not (not values and "s" in rec):
            raise Strict(f"exactly one value field (section 4.2): {raw}")
        name = base.get("bn", "") + rec.get("n", "")
        if not isinstance(name, str) or not NAME.match(name):
            raise Strict(f"name {name!r} (section 4.5.1)")
        unit = rec.get("u", base.get("bu"))
        if unit is not None and (unit not in UNITS or unit in NOT_RECOMMENDED):
            raise Strict(f"unit {unit!r}")
        res: dict[str, Any] = {"n": name, "t": number(base.get("bt", 0)) + number(rec.get("t", 0))}
        if unit is not None:
            res["u"] = unit
        if "v" in rec:
            res["v"] = number(rec["v"]) + number(base.get("bv", 0))
            res["raw"] = rec["v"]
        elif "vb" in rec:
            if not isinstance(rec["vb"], bool):
                raise Strict("vb is a boolean")
            res["vb"] = rec["vb"]
        out.append(res)
    return out


def test_the_reader_takes_rfc8428_section6_example_and_refuses_a_percent() -> None:
    """The reader itself: the RFC's own CBOR example reads; a `%` unit does not."""
    import json

    vec = json.loads((Path(__file__).parent / "vectors" / "rfc8428_section6.json").read_text())
    assert len(resolve(cbor2.loads(bytes.fromhex(vec["cbor"])))) == len(vec["records"])
    with pytest.raises(Strict):
        resolve([{0: "urn:dev:ow:1:fill", 1: "%", 2: 55}])
    with pytest.raises(Strict):
        resolve([{0: "urn:dev:ow:1:x", 2: 1, 4: True}])


@pytest.fixture
async def raw_up(mqtt_broker: Any) -> AsyncIterator[list[bytes]]:
    got: list[bytes] = []
    ready = asyncio.Event()

    async def run() -> None:
        async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as c:
            await c.subscribe("urbansense/v1/+/+/up", qos=1)
            ready.set()
            async for m in c.messages:
                assert isinstance(m.payload, bytes)
                got.append(m.payload)

    task = asyncio.create_task(run())
    await asyncio.wait_for(ready.wait(), 10)
    yield got
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_broker_traffic_reads_with_a_strict_rfc8428_reader(
    tmp_path: Path, mqtt_broker: Any, raw_up: list[bytes], running: Any,
) -> None:
    """Units recommended, fill a ratio, decimals exact, integers integral, names unique."""
    cfg = make_config(tmp_path, mqtt_broker, nodes=range(1, 8))
    gw = await running(cfg)
    t0 = int(time.time())
    sent = {
        (1, 5): {1: 1000, 2: 55, 5: 3659, 6: -250},  # bin: 1 m, 0.55, 3.659 V, -2.5 Cel
        (2, 9): {3: 12345, 4: 0, 12: 100},  # water: 12.345 m3, alarms 0, 100 l/h
        (3, 1): {0: True, 11: 1},  # parking
        (7, 2): {2: 100, 5: 3000, 8: 0, 9: 10203},  # 1 and 3 exactly: integers
    }
    for (node_id, fcnt), readings in sent.items():
        assert gw.feed(frame(node_id, fcnt, readings), "test", rssi_dbm=-70 if node_id == 3 else None)
    await wait_for(lambda: sum(len(resolve(cbor2.loads(p))) for p in raw_up) >= 18, what="all records")
    records = [r for p in raw_up for r in resolve(cbor2.loads(p))]
    by_name = {r["n"]: r for r in records}
    assert len(by_name) == len(records) == 18

    def rec(node_id: int, name: str) -> dict[str, Any]:
        return by_name[f"urn:dev:org:32473-{node_id:08x}:{name}"]

    assert {rec(n, "fc")["v"] for n, _ in sent} == {f for _, f in sent}
    fill = rec(1, "fill")
    assert (fill["u"], fill["v"]) == ("/", Fraction(55, 100))
    assert float(fill["v"]) == 0.55
    bat = rec(1, "bat")
    assert (bat["u"], bat["v"], float(bat["v"])) == ("V", Fraction(3659, 1000), 3.659)
    assert rec(1, "temp")["v"] == Fraction(-25, 10) and rec(1, "temp")["u"] == "Cel"
    assert rec(2, "vol")["v"] == Fraction(12345, 1000) and rec(2, "vol")["u"] == "m3"
    flow = rec(2, "flow")
    assert flow["u"] == "m3/s" and flow["raw"] == 100 / 3_600_000  # the double nearest 1/36000
    for name, value in ((rec(1, "dist"), 1), (rec(2, "alm"), 0), (rec(7, "fill"), 1), (rec(7, "bat"), 3),
                        (rec(7, "rst"), 0), (rec(7, "fw"), 10203), (rec(3, "ev"), 1)):
        assert type(name["raw"]) is int and name["v"] == value, name  # integral: a CBOR integer
    assert rec(3, "occ")["vb"] is True and rec(3, "rssi") == {**rec(3, "rssi"), "u": "dBW", "v": -100}
    assert all(r["t"].denominator == 1 and t0 <= r["t"] <= time.time() + 1 for r in records)
    for payload in raw_up:
        assert b"\xfb\x00\x00\x00\x00\x00\x00\x00\x00" not in payload  # no zero as a double
