"""Mutation testing with mutmut 3, module by module (``make mutate``; tools/mutate.py runs it).

modules: which files are mutated and which test files may kill their mutants.
outcomes: what a finished mutmut run says (killed, survived, equivalent by list or by rule).
retest: a run's survivors against the tests written since (the review's new kills).
report: the per-module table in bench/RESULTS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTMUT = Path(sys.executable).with_name("mutmut")
EQUIVALENTS = ROOT / "bench" / "mutation-equivalents.md"
