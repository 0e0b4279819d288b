"""Every test the docs cite exists: a renamed or deleted test cannot leave a promise unguarded.

README.md, docs/*.md and bench/*.md name the test behind a claim as ``tests/test_x.py``,
``tests/test_x.py::test_name``, ``test_x.py::test_name``, ``::test_other`` (in the file cited
last before it, on its line or above) or a bare ``test_name``. The test modules are parsed with ast,
not imported: a citation is checked against the functions and classes the file defines.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "bench").glob("*.md"))]

# A path ending in test_*.py with its ::names, a ::name continuing the last path, or a bare test_*
# name ("test_x..." is matched as the bare prefix and so refused: cite the whole name).
_CITATION = re.compile(
    r"(?<![\w/.])(?P<path>(?:[\w.-]+/)*test_\w+\.py)(?P<chain>(?:::\w+)*)"
    r"|(?<![\w/.:])::(?P<cont>\w+)"
    r"|(?<![\w/.:])(?P<bare>test_\w+)"
)


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _modules(root: Path = ROOT) -> dict[str, set[str]]:
    """'tests/test_x.py' -> the names it defines, for every Python file under tests/."""
    return {str(p.relative_to(root)): _defined(p) for p in sorted((root / "tests").rglob("*.py"))}


def stale(text: str, modules: dict[str, set[str]]) -> list[str]:
    """The citations in ``text`` that name no existing test file or no name defined in it."""
    everywhere = set().union(*modules.values())
    bad = []
    last = ""
    for n, line in enumerate(text.splitlines(), 1):
        for m in _CITATION.finditer(line):
            if m["path"]:
                path = m["path"] if "/" in m["path"] else f"tests/{m['path']}"
                if path not in modules:
                    bad.append(f"line {n}: no file {m['path']}")
                    continue
                last = path
                bad += [f"line {n}: {path} has no {name}" for name in m["chain"].split("::")[1:]
                        if name not in modules[path]]
            elif m["cont"]:
                if not last:
                    bad.append(f"line {n}: ::{m['cont']} follows no test file")
                elif m["cont"] not in modules[last]:
                    bad.append(f"line {n}: {last} has no {m['cont']}")
            elif m["bare"] not in everywhere:
                bad.append(f"line {n}: no test {m['bare']}")
    return bad


def test_every_test_the_docs_cite_exists() -> None:
    modules = _modules()
    problems = {str(d.relative_to(ROOT)): stale(d.read_text(), modules) for d in DOCS}
    assert {d: p for d, p in problems.items() if p} == {}


def test_the_docs_do_cite_tests() -> None:
    """The check above is not vacuous: SECURITY.md's claims each name a test, and all are seen."""
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    found = [m for m in _CITATION.finditer(text) if m["path"] and m["chain"]]
    assert len(found) >= 30
    assert any(m["chain"] == "::test_frame_counter_never_repeats" for m in found)


def test_a_renamed_test_a_missing_file_or_a_cut_name_is_reported() -> None:
    modules = {"tests/test_a.py": {"test_one", "test_two"}, "tests/support/b.py": {"helper"}}
    assert stale("::test_one before any file", modules) == ["line 1: ::test_one follows no test file"]
    doc = "\n".join([
        "ok: `tests/test_a.py::test_one`, `::test_two`, test_a.py::test_two, test_one, tests/test_a.py",
        "renamed: `tests/test_a.py::test_three`",
        "gone: `tests/test_gone.py::test_one`",
        "continued wrong: tests/test_a.py::test_one, ::test_four",
        "continued on the next line: ::test_two",
        "cut: `test_tw...`",
        "bare wrong: test_five",
    ])
    assert stale(doc, modules) == [
        "line 2: tests/test_a.py has no test_three",
        "line 3: no file tests/test_gone.py",
        "line 4: tests/test_a.py has no test_four",
        "line 6: no test test_tw",
        "line 7: no test test_five",
    ]
