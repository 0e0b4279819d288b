"""Runs a district as shards in parallel processes; the parent merges and settles the air.

Each shard builds every n-th node (simulator/build.py) and runs them with their own air
events recorded, not decided: collisions between nodes of different shards are decided here,
on the merged air (AirModel.settle_all). A shard's result holds plain Python values and bytes
only (outcomes as tuples, the air as packed arrays), so that a shard run by another
interpreter (PyPy 3.9, numpy 1.x) pickles back to this one; the summary is the same bit for bit
(tests/test_sim_pypy.py).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import pickle
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from simulator.air import AirModel, Gateway, RadioParams
from simulator.build import load_scenario
from simulator.energy import BOARDS_DIR, CELLS
from simulator.scenario import Scenario
from simulator.sim import ROOT, Simulation
from simulator.summary import FrameOutcome, NodeOutcome, build_summary


def _shard_worker(args: tuple[Any, int, int, int | None, float, Path]) -> dict[str, Any]:
    """One shard's run -> its outcomes as plain tuples, its air events packed."""
    sc, k, n, seed, duration, boards_dir = args
    sim = Simulation(sc, seed=seed, shard=(k, n), boards_dir=boards_dir)
    sim.run_until(duration)
    for node in sim.nodes:
        node.radio.stop()
    return {
        "nodes": [o.wire() for o in sim.node_outcomes(duration)],
        "frames": sim.ledger.wire_outcomes(),
        "air": sim.air.export_packed(),
        "decode_errors": dict(sim.ledger.decode_errors),
        "cycles": sum(nd.cycles for nd in sim.nodes),
    }


def _air_arrays(packed: list[tuple[bytes, str, tuple[int, ...]]]) -> list[Any]:
    return [np.frombuffer(b, dtype=np.dtype(dt)).reshape(shape) for b, dt, shape in packed]


def sim_python() -> str | None:
    """The interpreter for shard workers: $URBANSENSE_SIM_PYTHON, else the PyPy environment
    ``make setup`` builds (.venv-pypy), else None (this interpreter, forked)."""
    env = os.environ.get("URBANSENSE_SIM_PYTHON")
    if env:
        return None if env == "self" else env
    pypy = ROOT / ".venv-pypy" / "bin" / "python"
    return str(pypy) if pypy.exists() else None


def _run_shards_in(python: str, jobs: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Each shard in a child ``python -m simulator.shard IN OUT``: pickled arguments in, the
    pickled result out (files, since the firmware's console may print to stdout)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    with tempfile.TemporaryDirectory(prefix="urbansense-shards-") as tmp:
        procs = []
        for i, job in enumerate(jobs):
            src, dst = Path(tmp) / f"in-{i}.pickle", Path(tmp) / f"out-{i}.pickle"
            src.write_bytes(pickle.dumps(job, protocol=4))
            err = (Path(tmp) / f"err-{i}.txt").open("wb")
            procs.append((subprocess.Popen([python, "-m", "simulator.shard", str(src), str(dst)],
                                           cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=err), dst, err))
        failed: str | None = None
        for proc, dst, err in procs:
            if failed is not None:
                proc.kill()  # one shard failed: the run has no result
            rc = proc.wait()
            err.close()
            if failed is None and (rc != 0 or not dst.exists()):
                tail = Path(err.name).read_text(errors="replace")[-2000:]
                failed = f"simulator shard under {python} failed (exit {rc}):\n{tail}"
        if failed is not None:
            raise RuntimeError(failed)
        out = [pickle.loads(dst.read_bytes()) for _, dst, _ in procs]
    return out


def run_parallel(scenario: str | Path | dict[str, Any] | Scenario, *, seed: int | None = None,
                 nodes: int | None = None, duration_s: float | None = None,
                 processes: int = 2, boards_dir: Path = BOARDS_DIR,
                 python: str | None = None) -> dict[str, Any]:
    """Shard nodes across processes; the air is merged and settled here. No truth file.

    python: run the shards under that interpreter (e.g. sim_python()'s PyPy) instead of
    forking this one; the result is the same bit for bit (tests/test_sim_pypy.py).
    """
    sc = load_scenario(scenario, seed, nodes)
    d = sc.duration_s if duration_s is None else duration_s
    jobs = [(sc, k, processes, None, d, boards_dir) for k in range(processes)]
    if python is not None:
        parts = _run_shards_in(python, jobs)
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(processes) as pool:
            parts = pool.map(_shard_worker, jobs)
    return _merge_shards(sc, parts, d)


def _merge_shards(sc: Scenario, parts: list[dict[str, Any]], d: float) -> dict[str, Any]:
    """The shards' frames and air events as one district: collisions across shards are
    decided here, on the merged air."""
    gateways = [Gateway(str(g.get("id", f"gw-{i + 1}")), float(g.get("x", 0.0)), float(g.get("y", 0.0)))
                for i, g in enumerate(sc.gateways)]
    gw_index = {g.gw_id: i for i, g in enumerate(gateways)}
    for f in sc.faults:
        if f.kind == "gateway_out_of_range":
            gateways[gw_index[f.gateway or gateways[0].gw_id]].out_of_range.append(
                (f.at_s, f.until_s if f.until_s is not None else math.inf))
    air = AirModel(gateways, RadioParams(**sc.radio))
    all_nodes: list[NodeOutcome] = []
    frames: list[FrameOutcome] = []
    dec: Counter[str] = Counter()
    cols: list[list[Any]] = [[], [], [], [], []]
    for p in parts:
        base = len(frames)
        frames.extend(FrameOutcome.from_wire(t) for t in p["frames"])
        t, a, fr, rs, ch = _air_arrays(p["air"])
        for c, v in zip(cols, (t, a, fr + base, rs, ch)):  # noqa: B905 - 3.9: no strict=
            c.append(v)
        all_nodes.extend(NodeOutcome.from_wire(t) for t in p["nodes"])
        dec.update(p["decode_errors"])

    if len(gateways) > 62:
        raise ValueError("run_parallel: at most 62 gateways (heard-by bitmasks are int64)")
    heard = np.array([f.heard for f in frames], dtype=np.int64)
    if cols[0]:
        air.settle_all(np.concatenate(cols[0]), np.concatenate(cols[1]), np.concatenate(cols[2]),
                       np.concatenate(cols[3], axis=1), np.concatenate(cols[4]), heard)
    for outcome, h in zip(frames, heard.tolist()):  # noqa: B905 - 3.9
        outcome.heard = h
    all_nodes.sort(key=lambda n: n.index)
    cell = CELLS[sc.cell]
    return build_summary(sc, cell, gateways, all_nodes, frames, air.stats, d, dict(dec))
