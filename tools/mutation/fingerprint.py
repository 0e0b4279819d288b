"""What a mutant changes, as a short hash: the check that a name listed as equivalent in
bench/mutation-equivalents.md is still the mutant that was reviewed.

mutmut 3 names a mutant after its function and a number (``us_store.x_save__mutmut_7``); when
the function changes, the numbers move, and a listed name can land on another mutant, one
that is not equivalent. A listed name counts as equivalent (is not run, and is not a
survivor) only while the hash of its changed lines is the one pinned when it was reviewed
(bench/mutation-equivalents.pins, written by ``tools/mutate.py --pin-equivalents``); a name
whose hash differs is run and counted like any other mutant, so a renumbered list shows up as
survivors to review, never as a real mutant hidden.

The hash is over the mutant's function against mutmut's unmutated copy of it
(``NAME__mutmut_orig``) in the mutated file mutmut wrote: the removed and added lines,
stripped, with the function's name. Both sides read that file: tests/support/mutate_order.py
before running the mutant's tests, tools/mutation/outcomes.py after the run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path

PINS_NAME = "mutation-equivalents.pins"  # beside bench/mutation-equivalents.md

_NAME = re.compile(r"(?:x_|x\u01c1\w+\u01c1)(\w+?)__mutmut_(?:orig|\d+)")


_DEF = re.compile(r"\s*(?:async\s+)?def (\w+)\(")


def function_lines(text: list[str], mangled: str, start: int | None = None) -> list[str]:
    """A function's lines in a file mutmut wrote (every mutant of it is a function there, named
    like the mutant), with mutmut's name turned back into the function's, as ``mutmut show`` does.
    ``start``: the line of its ``def`` when known (else the file is searched)."""
    if start is None:
        start = next((i for i, line in enumerate(text) if (d := _DEF.match(line)) and d.group(1) == mangled), None)
        if start is None:
            return []
    i, line = start, text[start]
    indent = len(line) - len(line.lstrip())
    j = i + 1
    while j < len(text) and (not text[j].strip() or len(text[j]) - len(text[j].lstrip()) > indent
                             or text[j].lstrip().startswith(")")):
        j += 1
    while not text[j - 1].strip():
        j -= 1
    return [_NAME.sub(r"\1", x) for x in text[i:j]]


_FILES: dict[Path, tuple[list[str], dict[str, int]]] = {}


def _read(path: Path) -> tuple[list[str], dict[str, int]]:
    """A mutated file's lines and the line of each function's ``def`` (read once: a module's
    mutated file holds every mutant, and a run checks hundreds of listed names in it)."""
    if path not in _FILES:
        text = path.read_text().splitlines()
        _FILES[path] = (text, {d.group(1): i for i, line in enumerate(text) if (d := _DEF.match(line))})
    return _FILES[path]


def mutated_file(mutants: Path, mutant: str) -> Path:
    """Where mutmut wrote ``mutant``'s module under ``mutants/``: firmware modules (no package)
    under src/, as tools/mutate.py copies them."""
    module = mutant.rpartition("__mutmut_")[0].rpartition(".")[0]
    return mutants / ("src/" + module + ".py" if "." not in module else module.replace(".", "/") + ".py")


def diff_lines(mutants: Path, mutant: str) -> list[str] | None:
    """The unified diff of ``mutant``'s function against the unmutated one; None when the file
    or either function is not there."""
    try:
        text, defs = _read(mutated_file(mutants, mutant))
    except OSError:
        return None
    orig_name = mutant.rpartition("__mutmut_")[0].rpartition(".")[2] + "__mutmut_orig"
    mut_name = mutant.rpartition(".")[2]
    if orig_name not in defs or mut_name not in defs:
        return None
    orig = function_lines(text, orig_name, defs[orig_name])
    mut = function_lines(text, mut_name, defs[mut_name])
    return list(difflib.unified_diff(orig, mut, lineterm=""))


def fingerprint(mutants: Path, mutant: str) -> str | None:
    """12 hex digits of the function's name and the mutant's changed lines (stripped)."""
    diff = diff_lines(mutants, mutant)
    if diff is None:
        return None
    changed = [x[0] + x[1:].strip() for x in diff if x[:1] in "+-" and not x.startswith(("+++", "---"))]
    key = mutant.rpartition("__mutmut_")[0].rpartition(".")[2] + "\n" + "\n".join(changed)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def read_pins(bench: Path) -> dict[str, str]:
    try:
        pins = json.loads((bench / PINS_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in pins.items() if isinstance(k, str) and isinstance(v, str)}


def write_pins(bench: Path, pins: dict[str, str]) -> None:
    (bench / PINS_NAME).write_text(json.dumps(dict(sorted(pins.items())), indent=0) + "\n")


def still_reviewed(mutants: Path, mutant: str, pins: dict[str, str]) -> bool:
    """The listed ``mutant`` is the one reviewed: its pinned hash is what it changes now."""
    pinned = pins.get(mutant)
    return pinned is not None and fingerprint(mutants, mutant) == pinned
