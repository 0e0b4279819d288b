"""Mutation testing, module by module, with mutmut 3 (``make mutate``; not part of ``make test``).

Each module listed in tools/mutation/modules.py gets its own scratch copy of the tree and its own mutmut run,
restricted to the test files that cover it; within those, mutmut runs for each mutant only the
tests that reached the mutated function in its stats run, fastest first, up to the first that
fails (tests/support/mutate_order.py, which also logs each mutant's tests run). A mutant is a
one-line fault (an operator, a constant, a call argument, a removed statement) that must make a
test fail.

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
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mutation import EQUIVALENTS, MUTMUT, ROOT
from mutation.fingerprint import fingerprint, read_pins, write_pins
from mutation.modules import BY_NAME, SKIP_FUNCTIONS, Module
from mutation.outcomes import listed, summarize
from mutation.report import write_results
from mutation.retest import retest


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


# Every package of the tree is in the copy: one left out (collector, which `python -m urbansense`
# imports in a test's subprocess) is found through the venv's editable install, in whatever
# checkout that points at, and a mutant then fails on that checkout's code, not its own.
_PACKAGES = ("gateway", "urbansense", "simulator", "collector", "src")
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
    # tests/support/mutate_order.py: each mutant's tests fastest first, and a line per mutant.
    lines += ["pytest_add_cli_args =", "    -p", "    no:xdist", "    -p", "    no:cacheprovider",
              "    --hypothesis-seed=0", "    -p", "    tests.support.mutate_order"]
    # Log statements are not mutated: their wording changes no stored, sent or counted value
    # (bench/mutation-equivalents.md says so once, instead of listing hundreds of mutants).
    lines += ["do_not_mutate_patterns =", f"    {_LOG_LINE}"]
    lines += ["timeout_multiplier = 5.0", "use_git_change_detection = False", ""]
    return "\n".join(lines)


def _without_mutmut_section(pyproject: str) -> str:
    """mutmut reads pyproject's [tool.mutmut] before setup.cfg: the copy must not have one."""
    return re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[)", "", pyproject)


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
    if m.skip_by_rule:
        env["URBANSENSE_MUTATE_SKIP_BY_RULE"] = "1"
    mutmut = MUTMUT
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = work / "mutmut.log"
    with log.open("w") as out:
        # The functions left out of the kill rate are not run either (their mutants stay unrun).
        proc = subprocess.run(["nice", "-n", "15", str(mutmut), "run", "--max-children", str(max_children),
                               *_include_patterns(m)],
                              cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of mutmut and every process under it: what the load changes least (on 2 idle
    # cores a run takes at least half of it).
    cpu_s = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime)
    text = log.read_text(errors="replace")
    stopped = next((line for line in _STOPPED if line in text), None)
    if proc.returncode != 0 and stopped:
        # Not a finished run: no mutant was tried, so there are no survivors to read (reading
        # them all as 'not killed' took minutes and reported a 0 % module).
        return {"module": m.name, "rc": proc.returncode, "wall_s": round(wall), "mutants": 0, "killed": 0,
                "equivalent": 0, "survivors": [], "no_tests": 0, "kill_rate": None, "rule_equivalent": 0,
                "log": str(log), "error": f"mutmut stopped before any mutant ran: {stopped!r} (see {log})"}
    # The machine's load (1-minute average) as the run started and ended: wall times are
    # comparable only at a similar load.
    return {**summarize(m, work, proc.returncode, wall), "load": [round(load0, 1), round(os.getloadavg()[0], 1)],
            "cpu_s": cpu_s}


# What mutmut 3.8 prints when it stops before running mutants (mutmut/__main__.py): the
# unmutated tests failed, or its stats run did.
_STOPPED = ("Failed to run clean test", "failed to collect stats", "Stopping early, because we could not find")


def pin_equivalents(base: Path, names: list[str]) -> int:
    """Pin the listed equivalents found in the finished runs of ``names`` under ``base``:
    each one's hash (tools/mutation/fingerprint.py) as its mutant is in that run. The run is
    the one the review read (``mutmut show``); pins of other modules are kept."""
    pins = read_pins(EQUIVALENTS.parent)
    on_list = listed()
    pinned = 0
    for name in names:
        mutants = base / name / "mutants"
        if not mutants.is_dir():
            print(f"{name}: no finished run under {base}", file=sys.stderr)
            continue
        found = {k for meta in mutants.rglob("*.meta") for k in json.loads(meta.read_text())["exit_code_by_key"]}
        for mutant in sorted(on_list & found):
            fp = fingerprint(mutants, mutant)
            if fp is not None:
                pins[mutant] = fp
                pinned += 1
    # a name no longer on the list needs no pin
    write_pins(EQUIVALENTS.parent, {k: v for k, v in pins.items() if k in on_list})
    print(f"pinned {pinned} listed equivalents; {len(on_list)} listed")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", metavar="MODULE",
                    help="modules to run (default: all): " + ", ".join(BY_NAME))
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="one JSON line per module")
    ap.add_argument("--retest", action="store_true",
                    help="re-check the survivors of finished runs against the test files changed since")
    ap.add_argument("--pin-equivalents", action="store_true",
                    help="after a review: pin what each listed equivalent of the modules' finished runs changes "
                         "(bench/mutation-equivalents.pins), so a renumbered name is run, not skipped")
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
    if args.pin_equivalents:
        return pin_equivalents(base, args.modules or list(BY_NAME))
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
        if res.get("error"):
            print(f"{res['module']:10s} {res['error']}", file=sys.stderr, flush=True)
        elif args.json:
            print(json.dumps(res), flush=True)
        else:
            print(f"{res['module']:10s} mutants {res['mutants']:4d}  killed {res['killed']:4d}  "
                  f"equivalent {res['equivalent']:3d}  surviving {len(res['survivors']):3d} "  # type: ignore[arg-type]
                  f"(no tests {res['no_tests']})  kill rate {res['kill_rate']} %  {res['wall_s']} s", flush=True)
            stale = set(res.get("listed_but_changed", ()))  # type: ignore[arg-type]
            for s in res["survivors"]:  # type: ignore[attr-defined]
                print(f"    {s}" + ("  (listed as equivalent, but not the mutant pinned: review it)" if s in stale else ""))
        rate = res["kill_rate"]
        failed = failed or res["rc"] != 0 or rate is None or rate < 90.0  # type: ignore[operator]
    write_results(base, machine)
    return 1 if failed and not args.retest else 0


if __name__ == "__main__":
    sys.exit(main())
