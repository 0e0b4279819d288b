"""The demo's ledger: every frame the simulator sent against what reached the broker.

``compare`` counts, per kind and in total, what each frame became (the simulator's own
accounting says heard, lost on air or unacked) and what the independent subscriber decoded
(``Received``): delivered, missing, duplicated by one gateway, wrong or forged. ``verdict_ok``
is the pass rule. Pure (no I/O): ``urbansense demo`` (urbansense/demo_run.py) and the city
demo (urbansense/citydemo.py) call it at the end of their runs, and tests/test_demo_verdict.py
checks it alone (a mutation-tested module: tools/mutation/modules.py).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from urbansense.wire.node_config import KINDS


def verdict_ok(total: dict[str, int]) -> bool:
    """The demo passes when nothing reached the broker twice from one gateway, nothing wrong
    or forged reached it, nothing heard went missing and the firmware could decode its own
    frames. Frames lost on air (and at the simulator's socket boundary) are reported, not faults.
    """
    return (total["duplicated"] == 0 and total["wrong"] == 0 and total["missing"] == 0
            and total["undecodable"] == 0)


@dataclass
class Received:
    """What the independent subscriber decoded, per gateway."""

    frames: dict[tuple[int, int], list[tuple[str, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    messages: int = 0
    bytes: int = 0
    bad_packs: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def _expected_values(readings: dict[int, int | bool]) -> dict[str, float | bool]:
    from urbansense.wire.quantities import QUANTITIES

    out: dict[str, float | bool] = {}
    for key, raw in readings.items():
        q = QUANTITIES.get(key)
        if q is None:
            out[f"q{key}"] = int(raw)
        elif q.boolean:
            out[q.senml_name] = bool(raw)
        else:
            out[q.senml_name] = q.senml_value(int(raw))
    return out


def _same(expected: dict[str, float | bool], got: dict[str, Any]) -> bool:
    for name, value in expected.items():
        if name not in got:
            return False
        if isinstance(value, bool):
            if got[name] is not value:
                return False
        elif not math.isclose(float(got[name]), value, rel_tol=1e-9, abs_tol=1e-9):
            return False
    return True


def compare(sim: Any, by_id: dict[int, Any], rx: Received, gateways: list[Any]) -> dict[str, Any]:
    """Ground truth against what reached the broker, per kind and in total.

    A frame is heard, lost on air or (serial) unacked by the simulator's own accounting
    (simulator.summary.fate), so "heard" means here what it means in ``urbansense sim run``: a
    serial frame is heard once the gateway acknowledged it, which it does only after a durable
    commit. A heard frame that never reached the broker is missing; an unacknowledged serial
    frame is the node's to send again (it keeps it in its backlog), so it is reported, not a
    fault, and counts as delivered if it reached the broker all the same (a lost ack).
    """
    from simulator.summary import fate

    fields = ("sent", "lost_on_air", "serial_unacked", "lost_at_gateway", "undecodable", "heard",
              "delivered", "missing", "duplicated", "wrong", "cross_gateway_copies")
    per: dict[str, Counter[str]] = {k: Counter(dict.fromkeys(fields, 0)) for k in KINDS}
    sent_keys: set[tuple[int, int]] = set()
    nodes = sim.nodes_by_index
    for fr in sim.frames:
        node = nodes[fr.node]
        c = per[node.kind]
        c["sent"] += 1
        if fr.decode_error is not None:
            # The firmware's own codec cannot open it (a firmware bug): no counter to look up.
            c["undecodable"] += 1
            continue
        key = (node.node_id, fr.fcnt)
        sent_keys.add(key)
        became = fate(fr.transport, fr.heard, fr.acked)
        c[became] += 1
        # Heard on air, yet no gateway's socket took it: the simulator's side of the boundary.
        boundary_lost = fr.transport == "ble" and bool(fr.heard) and not fr.delivered
        copies = rx.frames.get(key, [])
        if not copies:
            if boundary_lost:
                c["lost_at_gateway"] += 1
            elif became == "heard":
                c["missing"] += 1
            continue
        c["delivered"] += 1
        per_gw = Counter(gw for gw, _ in copies)
        c["duplicated"] += sum(n - 1 for n in per_gw.values())
        c["cross_gateway_copies"] += len(per_gw) - 1
        expected = _expected_values(fr.readings)
        if not all(_same(expected, values) for _, values in copies):
            c["wrong"] += 1
    # Anything at the broker that no node sent is wrong too (a forgery or a decoding bug).
    for node_id, fcnt in rx.frames:
        if (node_id, fcnt) not in sent_keys:
            kind = by_id[node_id].kind if node_id in by_id else "parking"
            per[kind]["wrong"] += 1
    total: Counter[str] = Counter(dict.fromkeys(fields, 0))
    for c in per.values():
        total.update(c)
    return {"per_kind": {k: dict(v) for k, v in per.items()}, "total": dict(total)}


