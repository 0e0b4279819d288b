"""Mutation testing, module by module, with mutmut 3 (``make mutate``; not part of ``make test``).

Each module listed in MODULES gets its own scratch copy of the tree and its own mutmut run,
restricted to the test files that cover it; within those, mutmut runs for each mutant only the
tests that reached the mutated function in its stats run. A mutant is a one-line fault (an
operator, a constant, a call argument, a removed statement) that must make a test fail.

Why a scratch copy per module: mutmut 3 reads one [mutmut] section and writes ``mutants/`` in
the working directory; a copy per module keeps its results and never touches the tree.

The firmware is imported as top-level modules (``us_store``) from firmware/lib, and mutmut
names a mutant after its path: the copy puts firmware/lib at ``src/`` (mutmut drops a leading
``src.``) and makes ``mutants/firmware/lib`` a link to the mutated ``mutants/src``, so the
tests' own loaders (tests/fw_fakes.py, simulator.firmware_loader) import the mutants. Tests on
the MicroPython VM are not selected: a mutated file carries mutmut's trampolines.

Usage: python tools/mutate.py [--max-children N] [MODULE ...]   (default: all, in order)
Writes build/mutate/<module>/ (or $MUTATE_DIR) and prints, per module, killed / survived /
no tests / timeouts and the surviving mutants' names (``mutmut show NAME`` in that folder).
Equivalent mutants, with the reason, are listed in bench/mutation-equivalents.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MUTMUT = Path(sys.executable).with_name("mutmut")
EQUIVALENTS = ROOT / "bench" / "mutation-equivalents.md"

GW_UNITS = ["tests/test_gw_units.py", "tests/test_gw_promises.py", "tests/test_gw_robustness.py"]
GW_E2E = ["tests/test_gw_pipeline.py", "tests/test_gw_mqtt311.py"]
FW = ["tests/test_fw_node.py", "tests/test_fw_serial.py", "tests/test_fw_resets.py", "tests/test_fw_promises.py"]


@dataclass(frozen=True)
class Module:
    name: str
    paths: tuple[str, ...]  # files to mutate, repo-relative (firmware: firmware/lib/...)
    tests: tuple[str, ...]
    review: tuple[str, ...] = ()  # the files the survivors' review adds to (--retest runs these)


MODULES = [
    Module("outbox", ("gateway/outbox/*.py",), ("tests/test_gw_outbox.py", "tests/test_gw_units.py",
                                                "tests/test_gw_promises.py")),
    # Not tests/test_gw_powercut.py: 17 s a run (gcc, LD_PRELOAD power cuts) for what
    # test_gw_durable.py already reaches (stage, _recover_staged) in 1.5 s.
    Module("batcher", ("gateway/batcher.py", "gateway/dedup.py"),
           ("tests/test_gw_batcher.py", "tests/test_gw_durable.py", *GW_UNITS),
           ("tests/test_gw_batcher.py", "tests/test_gw_durable.py")),
    Module("publisher", ("gateway/publisher.py", "gateway/pump.py"), ("tests/test_gw_promises.py", "tests/test_gw_robustness.py",
                                                    *GW_E2E)),
    Module("verify", ("gateway/verify.py",), ("tests/test_gw_verify.py", *GW_UNITS),
           ("tests/test_gw_verify.py", "tests/test_gw_promises.py")),
    Module("replay", ("gateway/replay.py",), (*GW_UNITS, "tests/test_gw_perf_invariants.py"),
           ("tests/test_gw_promises.py",)),
    Module("us_store", ("firmware/lib/us_store.py",), (*FW, "tests/test_fw_config_cache.py", "tests/test_fw_wake.py"),
           ("tests/test_fw_promises.py",)),
    # Not the gateway's end-to-end tests: a mutant of the MIC or the cipher makes every frame
    # fail, and those tests then wait out their timeouts (3 min a mutant under load).
    Module("protocol", ("urbansense/wire/protocol.py", "urbansense/wire/body.py"),
           ("tests/test_protocol.py", "tests/test_wire_body.py", "tests/test_gw_units.py"),
           ("tests/test_protocol.py", "tests/test_wire_body.py", "tests/test_gw_units.py")),
    Module("framing", ("urbansense/wire/framing.py",), ("tests/test_protocol.py", *GW_UNITS),
           ("tests/test_gw_promises.py", "tests/test_protocol.py", "tests/test_gw_units.py")),
    Module("us_proto", ("firmware/lib/us_proto.py",), ("tests/test_protocol.py", *FW)),
    Module("us_serial", ("firmware/lib/us_serial.py",), ("tests/test_protocol.py", "tests/test_gw_robustness.py", *FW)),
    Module("us_water", ("firmware/lib/us_water.py",), ("tests/test_fw_logic.py", *FW, "tests/test_fw_wake.py",
                                                       "tests/test_fw_water.py"), ("tests/test_fw_water.py",)),
    # Not test_fw_config_cache.py: it reads the firmware's source for the board keys it uses,
    # and a mutated file holds every mutant's copy of them.
    Module("us_parking", ("firmware/lib/us_parking.py",), ("tests/test_fw_logic.py", *FW, "tests/test_fw_wake.py",
                                                           "tests/test_fw_drivers.py", "tests/test_fw_parking.py"),
           ("tests/test_fw_parking.py",)),
    # The deep-sleep wake pins (which may be armed, the stuck-pin guard, what woke us).
    Module("us_wake", ("firmware/lib/us_wake.py",), (*FW, "tests/test_fw_wake.py", "tests/test_fw_water.py",
                                                     "tests/test_fw_parking.py", "tests/test_fw_wake_plan.py"),
           ("tests/test_fw_wake_plan.py",)),
    Module("demo", ("urbansense/demo.py",), ("tests/test_demo_verdict.py",), ("tests/test_demo_verdict.py",)),
    # The simulator's books: what each frame became (sent, heard, lost on air, lost at the
    # gateway boundary, serial unacked) and the summary's counts. Only the tests that check
    # them: the runs elsewhere (test_sim_run, test_sim_cli) reach the same functions, cost
    # seconds a mutant, and check determinism, the world or energy.
    Module("sim_accounting", ("simulator/ledger.py", "simulator/summary.py"),
           ("tests/test_sim_accounting.py", "tests/test_sim_truth.py", "tests/test_sim_serial.py",
            "tests/test_demo_verdict.py"),
           ("tests/test_sim_accounting.py",)),
]
BY_NAME = {m.name: m for m in MODULES}

# Functions of a listed file that are not the module's concern (I/O around the accounting):
# their mutants are left out of the kill rate (mutmut still makes them: it mutates whole files).
SKIP_FUNCTIONS = {
    "demo": ("add_parser", "_main", "_subscribe", "run_demo", "_progress", "_drain", "render",
             "__init__", "__call__"),
    # the summary's energy, battery life, world and assumptions; the truth file's opening
    "sim_accounting": ("build_summary", "_pct", "_truth_at", "open_truth", "close"),
}

# mutmut exit codes (mutmut/stats.py status_by_exit_code)
_KILLED = {1, 3, 37}
_TIMEOUT = {24, -24, 152, 255, 36}
_NO_TESTS = {5, 33}


def _mutmut_path(path: str) -> str:
    return "src/" + path.removeprefix("firmware/lib/") if path.startswith("firmware/lib/") else path


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for f in files:
        src = ROOT / f
        if not f or not src.is_file():
            continue
        target = dest / ("src/" + f.removeprefix("firmware/lib/") if f.startswith("firmware/lib/") else f)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    # The mutated firmware is reached through firmware/lib, as the tests' loaders expect.
    fw = dest / "mutants" / "firmware"
    shutil.copytree(ROOT / "firmware", fw, ignore=shutil.ignore_patterns("lib", "__pycache__"))
    (fw / "lib").symlink_to(Path("..") / "src", target_is_directory=True)


_PACKAGES = ("gateway", "urbansense", "simulator", "src")
_LOG_LINE = r"^\s*[\w.]*(_log|_faults|_bugs|logger)\.(debug|info|warning|error|exception|critical|log)\("


def _include_patterns(m: Module) -> list[str]:
    """mutmut name patterns for the functions of the module's files that count (all but
    SKIP_FUNCTIONS): their mutants are the only ones run. None skipped: [] (all)."""
    import ast

    skip = SKIP_FUNCTIONS.get(m.name, ())
    if not skip:
        return []
    out = []
    for path in m.paths:
        for f in sorted(ROOT.glob(path)):
            mod = _mutmut_path(str(f.relative_to(ROOT))).removeprefix("src/").removesuffix(".py").replace("/", ".")
            for node in ast.parse(f.read_text()).body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in skip:
                    out.append(f"{mod}.x_{node.name}__mutmut_*")
                elif isinstance(node, ast.ClassDef):
                    out += [f"{mod}.x\u01c1{node.name}\u01c1{d.name}__mutmut_*" for d in node.body
                            if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef)) and d.name not in skip]
    return out


def _setup_cfg(m: Module) -> str:
    # mutmut parses every file of its source paths: only the package of the mutated files is
    # one; the others are copied as they are.
    sources = sorted({_mutmut_path(p).split("/")[0] for p in m.paths})
    copies = [p for p in _PACKAGES if p not in sources]
    lines = ["[mutmut]", "source_paths ="] + [f"    {p}" for p in sources] + ["only_mutate ="]
    lines += [f"    {_mutmut_path(p)}" for p in m.paths]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in m.tests]
    lines += ["also_copy ="] + [f"    {p}" for p in (*copies, "boards", "scenarios", "tools", "bench",
                                                     "examples", "deploy", "docs", "README.md", "Makefile")]
    # -p no:xdist: mutmut forks its own workers; a fixed hypothesis seed: every mutant meets the
    # same examples, so a kill is reproducible.
    lines += ["pytest_add_cli_args =", "    -p", "    no:xdist", "    -p", "    no:cacheprovider",
              "    --hypothesis-seed=0"]
    # Log statements are not mutated: their wording changes no stored, sent or counted value
    # (bench/mutation-equivalents.md says so once, instead of listing hundreds of mutants).
    lines += ["do_not_mutate_patterns =", f"    {_LOG_LINE}"]
    lines += ["timeout_multiplier = 5.0", "use_git_change_detection = False", ""]
    return "\n".join(lines)


def _without_mutmut_section(pyproject: str) -> str:
    """mutmut reads pyproject's [tool.mutmut] before setup.cfg: the copy must not have one."""
    return re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[)", "", pyproject)


def _function_of(mutant: str) -> str:
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
            if _function_of(name) in skip:
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


def _show_all(work: Path, names: list[str]) -> None:
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


def _show(work: Path, name: str) -> list[str]:
    """The lines of ``mutmut show NAME`` (from _show_all's cache when it has them)."""
    if (work, name) not in _SHOWN:
        _SHOWN[(work, name)] = subprocess.run([str(_MUTMUT), "show", name], cwd=work, capture_output=True,
                                              text=True, check=False).stdout.splitlines()
    return _SHOWN[(work, name)]


_SQL = re.compile(r"\b(SELECT|INSERT|DELETE|UPDATE|CREATE|PRAGMA|BEGIN|COMMIT|ROLLBACK|VALUES|WHERE)\b", re.I)


def _sql_case_only(work: Path, name: str) -> bool:
    """The mutant only changes the case of SQL text: SQLite reads keywords and identifiers
    case-insensitively, so it is equivalent (a rule, not a list)."""
    out = _show(work, name)
    minus = [line[1:] for line in out if line.startswith("-") and not line.startswith("---")]
    plus = [line[1:] for line in out if line.startswith("+") and not line.startswith("+++")]
    return bool(minus) and len(minus) == len(plus) and all(
        a != b and a.lower() == b.lower() and _SQL.search(a) for a, b in zip(minus, plus, strict=True))


def _frame_error_detail_only(work: Path, name: str) -> bool:
    """The mutant only changes a ``FrameError``'s detail (the arguments after the reason): the
    detail is read by nothing but the verify stage's rejection log line, so it is equivalent
    by the log rule (a rule, not a list). The reason, which is counted, must be unchanged."""
    import ast

    out = _show(work, name)
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


def equivalents() -> set[str]:
    """Mutant names written down as equivalent: every `NAME__mutmut_N` in
    bench/mutation-equivalents.md (each listed with its reason)."""
    if not EQUIVALENTS.exists():
        return set()
    return set(re.findall(r"`([^`\s]+__mutmut_\d+)`", EQUIVALENTS.read_text()))


def run(m: Module, base: Path, max_children: int) -> dict[str, object]:
    work = base / m.name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    _copy_tree(work)
    (work / "setup.cfg").write_text(_setup_cfg(m))
    pp = work / "pyproject.toml"
    pp.write_text(_without_mutmut_section(pp.read_text()))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["URBANSENSE_MUTATE"] = "1"
    mutmut = _MUTMUT
    t0 = time.monotonic()
    log = work / "mutmut.log"
    with log.open("w") as out:
        # The functions left out of the kill rate are not run either (their mutants stay unrun).
        proc = subprocess.run(["nice", "-n", "15", str(mutmut), "run", "--max-children", str(max_children),
                               *_include_patterns(m)],
                              cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    return summarize(m, work, proc.returncode, time.monotonic() - t0)


def summarize(m: Module, work: Path, rc: int, wall_s: float) -> dict[str, object]:
    """A finished mutmut run in ``work`` counted: killed, equivalent (listed or by rule), survivors."""
    log = work / "mutmut.log"
    r = results(work, SKIP_FUNCTIONS.get(m.name, ()))
    eq = equivalents()
    not_killed = r["survived"] + r["no_tests"] + r["other"]
    _show_all(work, [n for n in not_killed if n not in eq])
    by_rule = [n for n in not_killed if n not in eq and (_sql_case_only(work, n) or _frame_error_detail_only(work, n))]
    live = [n for n in not_killed if n not in eq and n not in by_rule]
    killed = len(r["killed"])
    total = killed + len(not_killed)
    non_equivalent = killed + len(live)
    return {"module": m.name, "rc": rc, "wall_s": round(wall_s), "mutants": total,
            "killed": killed, "equivalent": len(not_killed) - len(live), "survivors": live,
            "no_tests": len(r["no_tests"]),
            "kill_rate": round(100 * killed / non_equivalent, 1) if non_equivalent else None,
            "rule_equivalent": len(by_rule), "log": str(log)}


def _apply_diff(tree: Path, diff: list[str]) -> Path | None:
    """Apply a mutant shown by ``mutmut show`` (a function-relative diff) to the same lines of
    the current source in ``tree``: the removed lines must appear once there (indentation
    aside). Returns the file changed, or None when the function changed since the run."""
    header = next((line for line in diff if line.startswith("--- ")), None)
    if header is None:
        return None
    rel = header[4:].strip()
    path = tree / ("firmware/lib/" + rel.removeprefix("src/") if rel.startswith("src/") else rel)
    # The hunk with its context: the removed lines alone can occur more than once.
    body = [line for line in diff[diff.index(header) + 2:] if not line.startswith("@@")]
    minus = [line[1:] for line in body if line[:1] in (" ", "-")]
    plus = [line[1:] for line in body if line[:1] in (" ", "+")]
    if not minus or not path.exists():
        return None
    lines = path.read_text().split("\n")

    def find(block: list[str]) -> list[int]:
        want = [b.strip() for b in block]
        return [i for i in range(len(lines) - len(block) + 1)
                if [x.strip() for x in lines[i:i + len(block)]] == want]

    hits = find(minus)
    if len(hits) != 1:  # the function changed around the mutant since the run: the changed lines alone
        minus = [line[1:] for line in body if line[:1] == "-"]
        plus = [line[1:] for line in body if line[:1] == "+"]
        hits = find(minus) if minus else []
    if len(hits) != 1:
        return None
    i = hits[0]
    pad = len(lines[i]) - len(lines[i].lstrip()) - (len(minus[0]) - len(minus[0].lstrip()))
    if pad < 0:
        return None
    lines[i:i + len(minus)] = [" " * pad + p for p in plus]
    path.write_text("\n".join(lines))
    return path


def retest(m: Module, base: Path) -> dict[str, object]:
    """Survivors of a finished run against the test files changed since (the review's new
    kills): each mutant's diff applied to a fresh copy of the current tree, the changed test
    files run, the file restored. Much cheaper than a new run when a review added tests; a
    mutant whose function changed since the run is left as it was."""
    work = base / m.name
    summary = json.loads((work / "summary.json").read_text())
    cfg = (work / "setup.cfg").read_text() if (work / "setup.cfg").exists() else ""
    selected = cfg.split("pytest_add_cli_args_test_selection =", 1)[-1].split("also_copy =", 1)[0].split()
    changed = [t for t in m.tests if (ROOT / t).exists() and (
        not (work / "mutants" / t).exists()  # mutmut ran the tests as copied there
        or t not in selected  # added to the module's selection since the run
        or (work / "mutants" / t).read_bytes() != (ROOT / t).read_bytes())]
    if m.review:
        changed = [t for t in changed if t in m.review]
    tree = base / f"{m.name}-retest"
    if tree.exists():
        shutil.rmtree(tree)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for f in files:
        if f and (ROOT / f).is_file():
            (tree / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, tree / f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(tree)
    killed_now: list[str] = []
    not_applied: list[str] = []
    gone: list[str] = []
    _show_all(work, [n for n in summary["survivors"] if n not in equivalents()])
    by_rule = [n for n in summary["survivors"] if n not in equivalents()
               and (_sql_case_only(work, n) or _frame_error_detail_only(work, n))]
    summary["survivors"] = [n for n in summary["survivors"] if n not in by_rule]
    summary["equivalent"] += len(by_rule)
    summary["rule_equivalent"] = summary.get("rule_equivalent", summary.get("sql_case_equivalent", 0)) + len(by_rule)
    for name in [n for n in summary["survivors"] if n not in equivalents()] if changed else []:
        diff = _show(work, name)
        header = next((line for line in diff if line.startswith("--- ")), "--- ?")[4:].strip()
        target = tree / ("firmware/lib/" + header.removeprefix("src/") if header.startswith("src/") else header)
        original = target.read_bytes() if target.exists() else None
        try:
            if _apply_diff(tree, diff) is None:
                if original is not None and f"def {_function_of(name)}(" not in original.decode():
                    gone.append(name)  # the function was removed since the run: no mutant left
                else:
                    not_applied.append(name)
                continue
            r = subprocess.run(["nice", "-n", "15", sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:xdist",
                                "-p", "no:cacheprovider", "--hypothesis-seed=0", *changed],
                               cwd=tree, env=env, capture_output=True, check=False)
            if r.returncode == 1:
                killed_now.append(name)
        finally:
            if original is not None:
                target.write_bytes(original)
    eq = equivalents()  # the review may have written some down since the run
    summary["equivalent"] += len([n for n in summary["survivors"] if n in eq and n not in killed_now])
    summary["survivors"] = [n for n in summary["survivors"] if n not in killed_now and n not in eq and n not in gone]
    summary["mutants"] -= len(gone)
    summary["gone"] = summary.get("gone", []) + gone
    summary["killed"] += len(killed_now)
    summary["killed_on_retest"] = summary.get("killed_on_retest", 0) + len(killed_now)
    summary["not_retested"] = not_applied
    non_equivalent = summary["killed"] + len(summary["survivors"])
    summary["kill_rate"] = round(100 * summary["killed"] / non_equivalent, 1) if non_equivalent else None
    summary["retested_with"] = changed
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary  # type: ignore[no-any-return]


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
            "| equivalent (listed + by rule) | surviving | kill rate | previous | mutmut wall s |",
            "|---|---|---|---|---|---|---|---|---|"]
    not_run = []
    for m in MODULES:
        f = base / m.name / "summary.json"
        if not f.exists():
            if m.name in kept:
                rows.append(kept[m.name])
            else:
                not_run.append(m.name)
            continue
        r = json.loads(f.read_text())
        rate = f"{r['kill_rate']} %" if r["kill_rate"] is not None else "n/a"
        rule = r.get("rule_equivalent", r.get("sql_case_equivalent", 0))  # included in "equivalent"
        # 'previous' is the rate before it last changed: rewriting an unchanged row keeps it.
        old_rate, old_previous = previous.get(m.name, ("-", "-"))
        before = old_previous if old_rate == rate else old_rate
        rows.append(f"| {m.name} | {', '.join(m.paths)} | {r['mutants']} | {r['killed']} ({r.get('killed_on_retest', 0)}) | "
                    f"{r['equivalent'] - rule} + {rule} | {len(r['survivors'])} | {rate} | "
                    f"{before} | {r['wall_s'] or 'n/a'} |")
    block = [
        SECTION_START, "## Mutation testing", "",
        "Command: `make mutate` (`nice -n 15 python tools/mutate.py`, mutmut 3, 2 workers); "
        f"machine: {machine}.", "",
        "Each module's mutants run against the test files that cover it (tools/mutate.py MODULES), "
        "each mutant only against the tests that reach its function. Kill rate = killed (a test "
        "failed or ran out of time) / (all mutants - equivalent ones); floor 90 %. Equivalent "
        "mutants and the rules (log statements not mutated, SQL case, FrameError detail) are in "
        "bench/mutation-equivalents.md. A module's survivors were reviewed after its run: the "
        "tests written for them were run against each surviving mutant (`tools/mutate.py --retest`), "
        "not a whole new run.", "", *rows, ""]
    if not_run:
        block += [f"Not run in this pass: {', '.join(not_run)}.", ""]
    block.append(SECTION_END)
    head, _, rest = text.partition(SECTION_START)
    tail = rest.partition(SECTION_END)[2] if rest else ""
    RESULTS.write_text(head.rstrip("\n") + "\n\n" + "\n".join(block) + tail.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", metavar="MODULE",
                    help="modules to run (default: all): " + ", ".join(BY_NAME))
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="one JSON line per module")
    ap.add_argument("--retest", action="store_true",
                    help="re-check the survivors of finished runs against the test files changed since")
    ap.add_argument("--write-results", action="store_true",
                    help="only rewrite bench/RESULTS.md's section from the summaries already there")
    args = ap.parse_args(argv)
    unknown = [n for n in args.modules if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown module(s) {unknown}: choose from {', '.join(BY_NAME)}")
    base = Path(os.environ.get("MUTATE_DIR", ROOT / "build" / "mutate")).resolve()
    import platform

    cpu = platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    machine = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.write_results:
        write_results(base, machine)
        return 0
    failed = False
    for name in args.modules or list(BY_NAME):
        if args.retest:
            if (base / name / "summary.json").exists():
                print(json.dumps(retest(BY_NAME[name], base)), flush=True)
            continue
        res = run(BY_NAME[name], base, args.max_children)
        (base / name / "summary.json").write_text(json.dumps(res, indent=1))
        if args.json:
            print(json.dumps(res), flush=True)
        else:
            print(f"{res['module']:10s} mutants {res['mutants']:4d}  killed {res['killed']:4d}  "
                  f"equivalent {res['equivalent']:3d}  surviving {len(res['survivors']):3d} "  # type: ignore[arg-type]
                  f"(no tests {res['no_tests']})  kill rate {res['kill_rate']} %  {res['wall_s']} s", flush=True)
            for s in res["survivors"]:  # type: ignore[attr-defined]
                print(f"    {s}")
        rate = res["kill_rate"]
        failed = failed or res["rc"] != 0 or rate is None or rate < 90.0  # type: ignore[operator]
    write_results(base, machine)
    return 1 if failed and not args.retest else 0


if __name__ == "__main__":
    sys.exit(main())
