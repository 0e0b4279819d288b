"""Under tools/mutate.py (URBANSENSE_MUTATE=1): each mutant's tests run fastest first, and each
mutant's run is logged.

mutmut 3 runs, for each mutant, the tests that reached its function, with ``-x``, in the order
of a Python set: a mutant that a 10 ms unit test kills often ran a 10 s end-to-end test first.
Fastest first, a killed mutant costs the tests up to its cheapest killer; a survivor still runs
them all. The durations are whole tests (set-up, call and teardown: a gateway test's broker
starts in its set-up, which mutmut's own stats leave out), measured in mutmut's stats run,
which runs every selected test unmutated, and kept in ``mutants/mutate-durations.json``.

URBANSENSE_MUTATE_ORDER=0 keeps mutmut's order (to measure what the order saves).

A mutant written down as equivalent (bench/mutation-equivalents.md), and where the module asks
for it (URBANSENSE_MUTATE_SKIP_BY_RULE=1, tools/mutation/modules.py) one equivalent by the
FrameError-detail rule, runs no test: pytest
collects nothing (exit 5, mutmut's "no tests") and tools/mutation/outcomes.py counts it as
equivalent, as it did when it survived every test. An equivalent runs all its tests, and they
were most of a run's time (us_store: 9 of 323 mutants, 290 of 490 s). A listed name is skipped
only while what it changes hashes to the value pinned at its review
(tools/mutation/fingerprint.py): a name that mutmut renumbered onto another mutant is run like
any other. URBANSENSE_MUTATE_EQUIVALENTS=1 runs them all (to check the list).

Each mutant's run appends a line to ``mutants/mutate-runs.tsv``: mutant, tests run, tests
selected, seconds, pytest's exit status, the seconds the tests it ran took unmutated, and the
test that failed (none: it survived). tools/mutation/outcomes.py reads it for the tests run per
mutant, a cost that does not depend on the machine's load. Fastest first, a test that is never
the one that failed kills nothing that a faster test does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

import pytest

DURATIONS = Path("mutate-durations.json")  # mutmut runs the tests in mutants/
RUNS = Path("mutate-runs.tsv")
EQUIVALENTS = Path("bench/mutation-equivalents.md")  # tools/mutate.py has mutmut copy bench/

_measured: dict[str, float] = {}  # in the stats run: each test's whole duration
_durations: dict[str, float] = {}  # in a mutant's run: the stats run's
_run: dict[str, float] = {"selected": 0, "ran": 0, "t0": 0.0, "unmutated_s": 0.0}
_killer: list[str] = []  # the first test that failed


def _mutant() -> str:
    return os.environ.get("MUTANT_UNDER_TEST", "")


def _not_run(mutant: str) -> bool:
    """Equivalent: listed, or (where the module asks) by the FrameError-detail rule."""
    if os.environ.get("URBANSENSE_MUTATE_EQUIVALENTS") == "1":
        return False
    if mutant in _listed():
        _tools()
        from mutation.fingerprint import read_pins, still_reviewed

        return still_reviewed(Path.cwd(), mutant, read_pins(EQUIVALENTS.parent))
    if os.environ.get("URBANSENSE_MUTATE_SKIP_BY_RULE") != "1":
        return False
    try:
        return _by_rule(mutant)
    except Exception:  # an error here would end pytest with exit 3, which mutmut counts as a kill
        return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _measured.clear()
    _run.update(selected=len(items), ran=0, unmutated_s=0.0, t0=time.monotonic())
    _killer.clear()
    if "__mutmut_" not in _mutant():
        return
    if _not_run(_mutant()):
        items.clear()
        return
    try:
        _durations.update(json.loads(DURATIONS.read_text()))
    except (OSError, ValueError):
        return
    if os.environ.get("URBANSENSE_MUTATE_ORDER") != "0":
        # Unknown tests last: sorted() is stable, so they keep mutmut's order among themselves.
        items.sort(key=lambda item: _durations.get(item.nodeid, float("inf")))


def _listed() -> set[str]:
    """The names in bench/mutation-equivalents.md (the regex of tools/mutation/outcomes.py)."""
    try:
        return set(re.findall(r"`([^`\s]+__mutmut_\d+)`", EQUIVALENTS.read_text()))
    except OSError:
        return set()


def _tools() -> None:
    """mutmut's copy of tools/ on the path, as tools/mutate.py has it (mutmut runs in mutants/)."""
    import sys

    tools = str(Path("tools").resolve())
    if tools not in sys.path:
        sys.path.insert(0, tools)


def _by_rule(mutant: str) -> bool:
    """The mutant only changes a FrameError's detail: equivalent by the rule that
    tools/mutation/outcomes.py applies to ``mutmut show``'s diff after a run (see
    bench/mutation-equivalents.md), here applied to the mutated file before it."""
    import difflib
    import importlib.util

    head = mutant.rpartition("__mutmut_")[0]
    module, _, mangled = head.rpartition(".")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return False
    _tools()
    from mutation.fingerprint import function_lines
    from mutation.outcomes import frame_error_detail_diff

    text = Path(spec.origin).read_text().splitlines()
    orig = function_lines(text, mangled + "__mutmut_orig")
    if not any("FrameError(" in x or "_malformed(" in x for x in orig):
        return False
    diff = list(difflib.unified_diff(orig, function_lines(text, mutant.rpartition(".")[2]), lineterm=""))

    return frame_error_detail_diff(diff)


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
