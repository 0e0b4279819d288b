"""Under tools/mutate.py (URBANSENSE_MUTATE=1): each mutant's tests run fastest first, and each
mutant's run is logged.

mutmut 3 runs, for each mutant, the tests that reached its function, with ``-x``, in the order
of a Python set: a mutant that a 10 ms unit test kills often ran a 10 s end-to-end test first.
Fastest first, a killed mutant costs the tests up to its cheapest killer; a survivor still runs
them all. The durations are whole tests (set-up, call and teardown: a gateway test's broker
starts in its set-up, which mutmut's own stats leave out), measured in mutmut's stats run,
which runs every selected test unmutated, and kept in ``mutants/mutate-durations.json``.

URBANSENSE_MUTATE_ORDER=0 keeps mutmut's order (to measure what the order saves).

Each mutant's run appends a line to ``mutants/mutate-runs.tsv``: mutant, tests run, tests
selected, seconds, pytest's exit status, the seconds the tests it ran took unmutated, and the
test that failed (none: it survived). Fastest first, a test file that is never the one that
failed kills nothing that a faster test does not: it may leave the module's selection. tools/mutation/outcomes.py reads it for the tests
run per mutant, a cost that does not depend on the machine's load.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

DURATIONS = Path("mutate-durations.json")  # mutmut runs the tests in mutants/
RUNS = Path("mutate-runs.tsv")

_measured: dict[str, float] = {}
_run: dict[str, float] = {"selected": 0, "ran": 0, "t0": 0.0, "unmutated_s": 0.0}


def _mutant() -> str:
    return os.environ.get("MUTANT_UNDER_TEST", "")


_durations: dict[str, float] = {}
_killer: list[str] = []  # the first test that failed


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _measured.clear()
    _run.update(selected=len(items), ran=0, unmutated_s=0.0, t0=time.monotonic())
    _killer.clear()
    if "__mutmut_" not in _mutant():
        return
    try:
        _durations.update(json.loads(DURATIONS.read_text()))
    except (OSError, ValueError):
        return
    if os.environ.get("URBANSENSE_MUTATE_ORDER") != "0":
        # Unknown tests last: sorted() is stable, so they keep mutmut's order among themselves.
        items.sort(key=lambda item: _durations.get(item.nodeid, float("inf")))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _measured[report.nodeid] = _measured.get(report.nodeid, 0.0) + report.duration
    if report.when == "setup":
        _run["ran"] += 1
        _run["unmutated_s"] += _durations.get(report.nodeid, 0.0)
    if report.failed and not _killer:
        _killer.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    mutant = _mutant()
    if mutant == "stats":
        DURATIONS.write_text(json.dumps(_measured, indent=0, sort_keys=True))
    elif "__mutmut_" in mutant:
        line = (f"{mutant}\t{_run['ran']:.0f}\t{_run['selected']:.0f}\t{time.monotonic() - _run['t0']:.3f}\t{int(exitstatus)}"
                f"\t{_run['unmutated_s']:.3f}\t{''.join(_killer)}\n")
        with contextlib.suppress(OSError), RUNS.open("a") as f:
            f.write(line)
