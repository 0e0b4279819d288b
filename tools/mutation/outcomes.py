"""What a finished mutmut run in a module's scratch copy says: each mutant killed (a test failed
or it ran out of time), equivalent (written down in bench/mutation-equivalents.md, or by one of
the rules below) or surviving, and the module's kill rate."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from mutation import EQUIVALENTS, MUTMUT
from mutation.fingerprint import read_pins, still_reviewed
from mutation.modules import SKIP_FUNCTIONS, Module

# mutmut exit codes (mutmut/stats.py status_by_exit_code)
_KILLED = {1, 3, 37}
_TIMEOUT = {24, -24, 152, 255, 36}
_NO_TESTS = {5, 33}


def function_of(mutant: str) -> str:
    """urbansense.demo.x_render__mutmut_3 -> render; a.b.xǁClassǁmethod__mutmut_1 -> method."""
    head = mutant.rpartition("__mutmut_")[0].rpartition(".")[2]
    return head.rpartition("ǁ")[2] if "ǁ" in head else head.removeprefix("x_")


def results(work: Path, skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Mutant names by outcome: killed (a test failed, or it ran out of time), survived,
    no_tests (no selected test reaches the function), other (mutmut could not tell)."""
    out: dict[str, list[str]] = {"killed": [], "survived": [], "no_tests": [], "other": []}
    for meta in sorted((work / "mutants").rglob("*.meta")):
        data = json.loads(meta.read_text())
        for name, code in sorted(data["exit_code_by_key"].items()):
            if function_of(name) in skip:
                continue
            if code in _KILLED or code in _TIMEOUT:
                out["killed"].append(name)
            elif code in _NO_TESTS:
                out["no_tests"].append(name)
            elif code == 0:
                out["survived"].append(name)
            else:
                out["other"].append(name)
    return out


_SHOW_ALL = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
out = {}
for name in json.load(sys.stdin):
    try:
        out[name] = get_diff_for_mutant(name, path=find_mutant(name).path)
    except Exception as exc:  # reported as an empty diff: the rules then match nothing
        out[name] = ""
        print(name, repr(exc), file=sys.stderr)
json.dump(out, sys.stdout)
"""
_SHOWN: dict[tuple[Path, str], list[str]] = {}


def show_all(work: Path, names: list[str]) -> None:
    """The diffs of ``names`` (what ``mutmut show NAME`` prints) in one process: ``mutmut
    show`` takes seconds a call on a loaded machine, and the rules below read every survivor."""
    todo = [n for n in names if (work, n) not in _SHOWN]
    if not todo:
        return
    r = subprocess.run([sys.executable, "-c", _SHOW_ALL], cwd=work, input=json.dumps(todo), capture_output=True,
                       text=True, check=False)
    diffs = json.loads(r.stdout) if r.returncode == 0 else {}
    for n in todo:
        if n in diffs:
            _SHOWN[(work, n)] = diffs[n].splitlines()


def show(work: Path, name: str) -> list[str]:
    """The lines of ``mutmut show NAME`` (from show_all's cache when it has them)."""
    if (work, name) not in _SHOWN:
        _SHOWN[(work, name)] = subprocess.run([str(MUTMUT), "show", name], cwd=work, capture_output=True,
                                              text=True, check=False).stdout.splitlines()
    return _SHOWN[(work, name)]


_SQL = re.compile(r"\b(SELECT|INSERT|DELETE|UPDATE|CREATE|PRAGMA|BEGIN|COMMIT|ROLLBACK|VALUES|WHERE)\b", re.I)


def sql_case_only(work: Path, name: str) -> bool:
    """The mutant only changes the case of SQL text: SQLite reads keywords and identifiers
    case-insensitively, so it is equivalent (a rule, not a list)."""
    out = show(work, name)
    minus = [line[1:] for line in out if line.startswith("-") and not line.startswith("---")]
    plus = [line[1:] for line in out if line.startswith("+") and not line.startswith("+++")]
    return bool(minus) and len(minus) == len(plus) and all(
        a != b and a.lower() == b.lower() and _SQL.search(a) for a, b in zip(minus, plus, strict=True))


def frame_error_detail_only(work: Path, name: str) -> bool:
    """The mutant only changes a ``FrameError``'s detail (the arguments after the reason): the
    detail is read by nothing but the verify stage's rejection log line, so it is equivalent
    by the log rule (a rule, not a list). The reason, which is counted, must be unchanged."""
    return frame_error_detail_diff(show(work, name))


def frame_error_detail_diff(out: list[str]) -> bool:
    """frame_error_detail_only on the lines of a unified diff of the mutant's function
    (tests/support/mutate_order.py applies it before a mutant's run, from the mutated file)."""
    import ast

    minus = [line[1:].strip() for line in out if line.startswith("-") and not line.startswith("---")]
    plus = [line[1:].strip() for line in out if line.startswith("+") and not line.startswith("+++")]

    def call(line: str) -> tuple[str, ast.Call] | None:
        try:
            node = ast.parse(line).body[0]
        except (SyntaxError, IndexError):
            return None
        c = node.exc if isinstance(node, ast.Raise) else node.value if isinstance(node, ast.Expr | ast.Return) else None
        if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and not c.keywords:
            return c.func.id, c
        return None

    def same_reason(a: str, b: str) -> bool:
        ca, cb = call(a), call(b)
        if ca is None or cb is None or ca[0] != cb[0]:
            return False
        if ca[0] == "_malformed":  # body.py's FrameError("malformed_body", detail)
            return True
        args_a, args_b = ca[1].args, cb[1].args
        return ca[0] == "FrameError" and bool(args_a and args_b) and ast.dump(args_a[0]) == ast.dump(args_b[0])

    return bool(minus) and len(minus) == len(plus) and all(
        same_reason(a, b) for a, b in zip(minus, plus, strict=True))


def listed() -> set[str]:
    """Mutant names written down as equivalent: every `NAME__mutmut_N` in
    bench/mutation-equivalents.md (each listed with its reason)."""
    if not EQUIVALENTS.exists():
        return set()
    return set(re.findall(r"`([^`\s]+__mutmut_\d+)`", EQUIVALENTS.read_text()))


def equivalents(work: Path, names: list[str]) -> tuple[set[str], list[str]]:
    """Of ``names`` (mutants of the run in ``work``), those listed as equivalent that are still
    the mutant reviewed (tools/mutation/fingerprint.py), and those listed that are not: a
    renumbered name, or one never pinned, which count as survivors until reviewed again."""
    pins = read_pins(EQUIVALENTS.parent)
    on_list = listed()
    ok = {n for n in names if n in on_list and still_reviewed(work / "mutants", n, pins)}
    return ok, sorted(n for n in names if n in on_list and n not in ok)


def tests_run(work: Path) -> tuple[float, float] | None:
    """Mean tests run and tests selected per mutant, from tests/support/mutate_order.py's
    log: what a run costs whatever the machine's load (a mutant stops at its first failure)."""
    try:
        rows = [line.split("\t") for line in (work / "mutants" / "mutate-runs.tsv").read_text().splitlines()]
    except OSError:
        return None
    rows = [r for r in rows if len(r) >= 5]
    if not rows:
        return None
    return (round(sum(int(r[1]) for r in rows) / len(rows), 1), round(sum(int(r[2]) for r in rows) / len(rows), 1))


def summarize(m: Module, work: Path, rc: int, wall_s: float) -> dict[str, object]:
    """A finished mutmut run in ``work`` counted: killed, equivalent (listed or by rule), survivors."""
    log = work / "mutmut.log"
    r = results(work, SKIP_FUNCTIONS.get(m.name, ()))
    not_killed = r["survived"] + r["no_tests"] + r["other"]
    eq, changed = equivalents(work, not_killed)
    show_all(work, [n for n in not_killed if n not in eq])
    by_rule = [n for n in not_killed if n not in eq and (sql_case_only(work, n) or frame_error_detail_only(work, n))]
    live = [n for n in not_killed if n not in eq and n not in by_rule]
    killed = len(r["killed"])
    total = killed + len(not_killed)
    non_equivalent = killed + len(live)
    return {"module": m.name, "rc": rc, "wall_s": round(wall_s), "mutants": total,
            "killed": killed, "equivalent": len(not_killed) - len(live), "survivors": live,
            "no_tests": len([n for n in r["no_tests"] if n in live]),
            # tests/support/mutate_order.py runs no test for an equivalent, listed or by rule (pytest exit 5)
            "equivalent_not_run": len([n for n in r["no_tests"] if n not in live]),
            "kill_rate": round(100 * killed / non_equivalent, 1) if non_equivalent else None,
            "rule_equivalent": len(by_rule), "log": str(log), "tests_per_mutant": tests_run(work),
            "listed_but_changed": changed}
