"""Realistic uplink frames for gateway benchmarks, encoded by the real firmware codec."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from simulator.firmware_loader import firmware_module

us_proto = firmware_module("us_proto")

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Workload:
    keys: dict[int, bytes]  # node id -> root key
    kinds: dict[int, str]
    frames: list[bytes]  # in send order; counters strictly increase per node


def make_workload(n_nodes: int, n_frames: int, seed: int = 1) -> Workload:
    rng = random.Random(seed)
    keys: dict[int, bytes] = {}
    kinds: dict[int, str] = {}
    derived: dict[int, us_proto.Keys] = {}
    for i in range(n_nodes):
        node_id = 0x10000000 + i
        keys[node_id] = rng.randbytes(16)
        kinds[node_id] = ("parking", "bin", "water")[i % 3]
        derived[node_id] = us_proto.Keys(keys[node_id])
    fcnt = dict.fromkeys(keys, 0)
    ids = list(keys)
    frames = []
    for _ in range(n_frames):
        node_id = rng.choice(ids)
        fcnt[node_id] += 1
        kind = kinds[node_id]
        if kind == "parking":
            readings = {us_proto.Q_OCCUPIED: rng.random() < 0.5, us_proto.Q_EVENTS: 1}
        elif kind == "bin":
            readings = {us_proto.Q_DISTANCE_MM: rng.randrange(50, 1200), us_proto.Q_FILL_PCT: rng.randrange(101),
                        us_proto.Q_BATTERY_MV: rng.randrange(3000, 3700)}
        else:
            readings = {us_proto.Q_VOLUME_L: rng.randrange(10**7), us_proto.Q_ALARMS: 0, us_proto.Q_FLOW_LPH: rng.randrange(200)}
        frames.append(us_proto.encode_uplink(derived[node_id], node_id, fcnt[node_id], us_proto.T_REPORT, readings))
    return Workload(keys, kinds, frames)


def frame_key(frame: bytes) -> tuple[int, int]:
    """(node_id, fcnt) of an uplink; the workloads stay below 2^16 frames per node."""
    return int.from_bytes(frame[1:5], "little"), frame[5] | (frame[6] << 8)
