"""bench/RESULTS.md's mutation section: one row per module, from each module's summary.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mutation import ROOT
from mutation.modules import BY_NAME, MODULES

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- mutation:start (tools/mutate.py writes this section; urbansense bench keeps it) -->"
SECTION_END = "<!-- mutation:end -->"


def _previous_rates(text: str) -> dict[str, tuple[str, str]]:
    """Kill rate and 'previous' column per module in the section as it stands."""
    block = text.partition(SECTION_START)[2].partition(SECTION_END)[0]
    return {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(
        r"^\| (\w+) \|(?:[^|]*\|){5} ([\d.]+ %|n/a) \| ([^|]*?) \|", block, re.M)}


def _previous_rows(text: str) -> dict[str, str]:
    """Each module's row in the section as it stands: a run over some modules (or in another
    MUTATE_DIR) keeps the others' rows instead of dropping them."""
    block = text.partition(SECTION_START)[2].partition(SECTION_END)[0]
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| (\w+) \|.*\|$", block, re.M) if m.group(1) in BY_NAME}


def write_results(base: Path, machine: str) -> None:
    """The per-module table in bench/RESULTS.md, from each module's summary.json under ``base``."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    previous = _previous_rates(text)
    kept = _previous_rows(text)
    rows = ["| module | files | mutants | killed (of which by the review's tests, --retest) "
            "| equivalent (listed + by rule) | surviving | kill rate | previous | mutmut wall s "
            "| CPU s | tests run per mutant (of selected) | load at start, end |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    not_run = []
    failed = []
    wall = cpu = 0
    retested = False  # a row's kills include --retest ones
    one_pass = True  # every row from this pass's summaries
    loads: list[float] = []
    for m in MODULES:
        f = base / m.name / "summary.json"
        if not f.exists():
            if m.name in kept:
                # A row from before these columns: padded with n/a.
                row = kept[m.name] + " n/a |" * max(0, 13 - kept[m.name].count("|"))
                rows.append(row)
                cells = [c.strip() for c in row.split("|")]
                wall += int(cells[9]) if cells[9].isdigit() else 0
                cpu += int(cells[10]) if cells[10].isdigit() else 0
                loads += [float(x) for x in re.findall(r"[\d.]+", cells[12])]
                retested = retested or not cells[4].endswith("(0)")
                one_pass = False
            else:
                not_run.append(m.name)
            continue
        r = json.loads(f.read_text())
        wall += r["wall_s"] or 0
        cpu += r.get("cpu_s") or 0
        loads += r.get("load") or []
        tpm = r.get("tests_per_mutant")
        load = r.get("load")
        if r.get("error"):
            failed.append(m.name)
        retested = retested or bool(r.get("killed_on_retest"))
        rate = f"{r['kill_rate']} %" if r["kill_rate"] is not None else "n/a"
        rule = r.get("rule_equivalent", r.get("sql_case_equivalent", 0))  # included in "equivalent"
        # 'previous' is the rate before it last changed: rewriting an unchanged row keeps it.
        old_rate, old_previous = previous.get(m.name, ("-", "-"))
        before = old_previous if old_rate == rate else old_rate
        rows.append(f"| {m.name} | {', '.join(m.paths)} | {r['mutants']} | {r['killed']} ({r.get('killed_on_retest', 0)}) | "
                    f"{r['equivalent'] - rule} + {rule} | {len(r['survivors'])} | {rate} | "
                    f"{before} | {r['wall_s'] or 'n/a'} | {r.get('cpu_s', 'n/a')} | {f'{tpm[0]} ({tpm[1]})' if tpm else 'n/a'} | "
                    f"{f'{load[0]}, {load[1]}' if load else 'n/a'} |")
    passes = "one pass of every module" if one_pass else "the table's runs may be of different passes"
    block = [
        SECTION_START, "## Mutation testing", "",
        "Command: `make mutate` (`nice -n 15 python tools/mutate.py`, mutmut 3, 2 workers); "
        f"machine: {machine}.", "",
        "Each module's mutants run against the test files that cover it (tools/mutation/modules.py), "
        "each mutant only against the tests that reach its function, fastest first, up to the first "
        "that fails, and an equivalent one (listed, or by the FrameError rule) against none "
        "(tests/support/mutate_order.py); tests run per mutant is that count, which the "
        "machine's load does not change. Kill rate = killed (a test "
        "failed or ran out of time) / (all mutants - equivalent ones); floor 90 %. Equivalent "
        "mutants and the rules (log statements not mutated, SQL case, FrameError detail) are in "
        "bench/mutation-equivalents.md. A module's survivors are reviewed after its run; the "
        "count in brackets is of survivors killed by the review's tests when only those were run "
        "against each survivor (`tools/mutate.py --retest`), not a whole new run"
        + (" (0 in every row: each row is a whole run of its module)." if not retested else "."), "",
        f"A whole run (the rows' wall times summed): {wall} s ({wall / 60:.0f} min), at a 1-minute load of "
        f"{f'{min(loads)}-{max(loads)}' if loads else 'n/a'} ({passes}); CPU seconds of mutmut and its processes, which the load changes least: {cpu} s "
        f"(on 2 idle cores at least {cpu / 120:.0f} min).", "", *rows, ""]
    if failed:
        block += [f"Failed (mutmut stopped before any mutant ran; see its mutmut.log): {', '.join(failed)}.", ""]
    if not_run:
        block += [f"Not run in this pass: {', '.join(not_run)}.", ""]
    block.append(SECTION_END)
    head, _, rest = text.partition(SECTION_START)
    tail = rest.partition(SECTION_END)[2] if rest else ""
    RESULTS.write_text(head.rstrip("\n") + "\n\n" + "\n".join(block) + tail.rstrip("\n") + "\n")
