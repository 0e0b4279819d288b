"""A finished run's survivors against the test files changed since: the review's new kills,
without a whole new run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mutation import ROOT
from mutation.modules import Module
from mutation.outcomes import (
    equivalents,
    frame_error_detail_only,
    function_of,
    show,
    show_all,
    sql_case_only,
)


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
    eq0, _ = equivalents(work, summary["survivors"])
    show_all(work, [n for n in summary["survivors"] if n not in eq0])
    by_rule = [n for n in summary["survivors"] if n not in eq0
               and (sql_case_only(work, n) or frame_error_detail_only(work, n))]
    summary["survivors"] = [n for n in summary["survivors"] if n not in by_rule]
    summary["equivalent"] += len(by_rule)
    summary["rule_equivalent"] = summary.get("rule_equivalent", summary.get("sql_case_equivalent", 0)) + len(by_rule)
    for name in [n for n in summary["survivors"] if n not in eq0] if changed else []:
        diff = show(work, name)
        header = next((line for line in diff if line.startswith("--- ")), "--- ?")[4:].strip()
        target = tree / ("firmware/lib/" + header.removeprefix("src/") if header.startswith("src/") else header)
        original = target.read_bytes() if target.exists() else None
        try:
            if _apply_diff(tree, diff) is None:
                if original is not None and f"def {function_of(name)}(" not in original.decode():
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
    eq, _ = equivalents(work, summary["survivors"])  # the review may have listed (and pinned) some since
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
