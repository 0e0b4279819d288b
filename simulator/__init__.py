"""The urbansense simulator: a virtual district running the real firmware (CPython or PyPy).

In-process API (for the demo and the end-to-end tests)::

    from simulator import Simulation
    sim = Simulation("scenarios/angers-centre.toml", seed=1, serial="pty")
    sim.registry()        # [NodeInfo(name, node_id, kind, key_hex, transport, gateway, serial_path)]
    sim.serial_ports()    # {node name: pty slave path} -> the gateway's serial config
    sim.gateways[0].sim_socket = "/run/.../air.sock"   # BLE to a gateway's datagram input
    sim.open_truth("truth.jsonl")
    th = sim.start_realtime(duration_s=3600, speed=60)   # or sim.run() / sim.run_until(t)
    ...; sim.stop(); th.join(); sim.last_summary; sim.close()

Each heard advertisement is one datagram to the gateway's documented datagram input
(urbansense/wire/advert.py, docs/GATEWAY.md); the gateway imports nothing from here.
Names are imported lazily (numpy and the firmware load with the first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AirModel": "simulator.air",
    "Gateway": "simulator.air",
    "RadioParams": "simulator.air",
    "CELLS": "simulator.energy",
    "Cell": "simulator.energy",
    "PowerProfile": "simulator.energy",
    "load_board": "simulator.energy",
    "Scenario": "simulator.scenario",
    "NodeInfo": "simulator.build",
    "Simulation": "simulator.sim",
    "run_parallel": "simulator.parallel",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'simulator' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
