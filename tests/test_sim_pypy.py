"""Shards on another interpreter (PyPy, as bench/bench_sim.py runs them) give the same run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from simulator.parallel import run_parallel, sim_python

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


_WIRE_ON_ANY_PYTHON = """
import json, pathlib, sys
from urbansense.wire import advert, body, errors, framing, node_config, protocol, quantities, senml, senml_reader
vectors = pathlib.Path(sys.argv[1])
out = []
for vec in json.loads((vectors / "uplink.json").read_text()):
    frame = bytes.fromhex(vec["frame"])
    keys = protocol.NodeKeys(bytes.fromhex(vec["key"]))
    up = protocol.verify_uplink(keys, frame, protocol.parse_header(frame), vec["last_fcnt"])
    assert framing.unwrap(bytes.fromhex(vec["serial"])[:-1]) == frame
    rec = senml.FrameRecord(up.node_id, up.fcnt, up.ftype, up.readings, 1772409600.5, -70)
    part, n = senml.encode_frame(rec)
    out.append([up.node_id, up.fcnt, sorted(up.readings.items()),
                senml_reader.frames_from_pack(senml.join_frames([part], n))])
for vec in json.loads((vectors / "ack.json").read_text()):
    cmds = dict(vec["commands"]) if vec["commands"] else None
    ack = protocol.encode_ack(protocol.NodeKeys(bytes.fromhex(vec["key"])), vec["node_id"],
                              vec["dcnt"], vec["acked_fcnt"], cmds)
    out.append(framing.wrap(ack).hex())
try:
    protocol.parse_header(b"\\x10" * 3)
except errors.FrameError as e:
    out.append(e.reason)
out.append([node_config.KINDS, sorted(quantities.COMMANDS.items())])
address, rssi, mfr = advert.decode_advert(advert.encode_advert("AA:BB", -60, {0xFFFF: b"\\x10"}))
out.append([address, rssi, sorted((k, v.hex()) for k, v in mfr.items())])
out.append(sorted(body.decode_body(bytes.fromhex("a300f50b1901f40c1b0000000100000000")).items()))
print(json.dumps(out))
"""


@pytest.mark.skipif(PYPY is None, reason="no PyPy environment (make setup builds .venv-pypy when pypy3 is installed)")
def test_urbansense_wire_runs_on_pypy_as_on_cpython() -> None:
    """Every module of the wire package imports and gives the same bytes on the shards' PyPy 3.9."""
    assert PYPY is not None
    import subprocess

    runs = [subprocess.run([python, "-c", _WIRE_ON_ANY_PYTHON, str(ROOT / "tests" / "vectors")],
                           capture_output=True, text=True, timeout=60, cwd=ROOT, check=True,
                           env={"PYTHONPATH": str(ROOT)}).stdout
            for python in (sys.executable, PYPY)]
    assert json.loads(runs[0]) and runs[0] == runs[1]


def test_the_cli_runs_its_shards_where_the_bench_does() -> None:
    """``urbansense sim run --processes N``, the command a user types, takes the fast path."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "urbansense", "sim", "run", "--scenario", str(SMOKE), "--seed", "5",
         "--duration", "2h", "--processes", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"shards: 2 processes on {PYPY or sys.executable}" in proc.stderr
