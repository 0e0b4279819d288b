"""Shards on another interpreter (PyPy, as bench/bench_sim.py runs them) give the same run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from simulator.sim import run_parallel, sim_python

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scenarios" / "smoke.toml"
PYPY = sim_python()


@pytest.mark.skipif(PYPY is None, reason="no PyPy environment (make setup builds .venv-pypy when pypy3 is installed)")
def test_pypy_shards_give_the_cpython_summary_bit_for_bit() -> None:
    assert PYPY is not None
    forked = run_parallel(SMOKE, seed=5, duration_s=10 * 3600.0, processes=2)
    pypy = run_parallel(SMOKE, seed=5, duration_s=10 * 3600.0, processes=2, python=PYPY)
    assert forked["wake_cycles"] > 100
    assert json.dumps(forked, sort_keys=True) == json.dumps(pypy, sort_keys=True)


def test_this_interpreter_as_a_child_gives_the_forked_summary() -> None:
    # The subprocess path itself (pickled job in, pickled plain result out), on CPython.
    forked = run_parallel(SMOKE, seed=6, duration_s=3 * 3600.0, processes=2)
    child = run_parallel(SMOKE, seed=6, duration_s=3 * 3600.0, processes=2, python=sys.executable)
    assert json.dumps(forked, sort_keys=True) == json.dumps(child, sort_keys=True)


def test_a_failing_shard_interpreter_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"simulator shard under /bin/false failed \(exit 1\)"):
        run_parallel(SMOKE, seed=6, duration_s=600.0, processes=2, python="/bin/false")


def test_text_seeded_streams_are_random_random_of_the_text() -> None:
    import random

    from simulator.rng import stream

    for text in ("7:123:place", "city-10k:42:air", "é" * 300):
        a, b = stream(text), random.Random(text)
        assert [a.random() for _ in range(5)] == [b.random() for _ in range(5)]
