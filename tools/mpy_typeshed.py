"""Assemble a MicroPython/ESP32 typeshed for mypy from the installed stub packages.

``micropython-stdlib-stubs`` installs a reduced typeshed (``stdlib/``, ``stubs/``, ``_mpy_shed/``)
and ``micropython-esp32-stubs`` installs top-level ``machine.pyi``, ``esp32.pyi``, ``time.pyi``...
straight into site-packages, where mypy does not look for them. This script merges both into
``build/mpy-typeshed`` (typeshed layout, ESP32 stubs win over the reduced stdlib, every module
listed in ``stdlib/VERSIONS``) so that ``tools/mypy-firmware.ini`` can point
``custom_typeshed_dir`` at it: firmware is then checked against MicroPython's modules and never
against CPython's stdlib.

Usage: python tools/mpy_typeshed.py [OUTDIR]   (idempotent; rebuilds when stub versions change)
"""

from __future__ import annotations

import fcntl
import shutil
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "mpy-typeshed"
PORT_STUBS = "micropython-esp32-stubs"
STDLIB_STUBS = "micropython-stdlib-stubs"


def _files(dist_name: str) -> list[tuple[str, Path]]:
    dist = distribution(dist_name)
    out: list[tuple[str, Path]] = []
    for f in dist.files or []:
        rel = str(f)
        if rel.endswith(".pyi"):
            out.append((rel, Path(str(dist.locate_file(f)))))
    return out


def build(out: Path = DEFAULT_OUT) -> Path:
    """Build (or reuse) the typeshed at ``out``; safe to call from parallel test workers."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f".{out.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(out)


def _build_locked(out: Path) -> Path:
    try:
        stamp_text = "\n".join(
            f"{n}=={distribution(n).version}" for n in (STDLIB_STUBS, PORT_STUBS)
        )
    except PackageNotFoundError as e:
        raise SystemExit(f"{e.name} is not installed; run `make setup`") from None
    stamp = out / ".stamp"
    if stamp.is_file() and stamp.read_text() == stamp_text:
        return out
    if out.exists():
        shutil.rmtree(out)
    stdlib = out / "stdlib"

    for rel, src in _files(STDLIB_STUBS):
        # stdlib/** and stubs/** keep their place; _mpy_shed is imported by the stubs as a module.
        dest = out / rel if rel.startswith(("stdlib/", "stubs/")) else stdlib / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    versions_src = next(
        Path(str(distribution(STDLIB_STUBS).locate_file(f)))
        for f in distribution(STDLIB_STUBS).files or []
        if str(f) == "stdlib/VERSIONS"
    )
    listed = {
        line.split(":")[0].strip()
        for line in versions_src.read_text().splitlines()
        if ":" in line and not line.lstrip().startswith("#")
    }

    added: set[str] = {"_mpy_shed"}
    for rel, src in _files(PORT_STUBS):
        if rel.startswith("__builtins__"):
            continue  # a pyright convention; mypy would see a module named __builtins__
        dest = stdlib / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.name == "__init__.pyi" and dest.parent != stdlib:
            # a package replaces a same-named single-file module of the reduced stdlib
            (stdlib / f"{dest.parent.name}.pyi").unlink(missing_ok=True)
        elif dest.parent == stdlib and (stdlib / dest.stem).is_dir():
            shutil.rmtree(stdlib / dest.stem)  # a port single-file module replaces a package
        shutil.copyfile(src, dest)
        added.add(rel.split("/")[0].removesuffix(".pyi"))

    extra = sorted(added - listed)
    versions = versions_src.read_text().rstrip("\n") + "\n"
    versions += "# added by tools/mpy_typeshed.py from " + PORT_STUBS + "\n"
    versions += "".join(f"{name}: 3.0-\n" for name in extra)
    (stdlib / "VERSIONS").write_text(versions)
    stamp.write_text(stamp_text)
    return out


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    print(build(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
