"""Run MicroPython source on the official WebAssembly port through ``tools/mpvm.mjs``.

``run_micropython(script, mounts={host_dir: "/lib"})`` writes ``script`` to a temporary
file, copies each mount into the VM file system (mounted directories go on ``sys.path``)
and returns the finished process: ``returncode`` 0 on success, 1 plus the traceback on
``stderr`` if the script raised, or the ``SystemExit`` code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MPVM = ROOT / "tools" / "mpvm.mjs"
NPM_PACKAGE = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
FIRMWARE_LIB = ROOT / "firmware" / "lib"
VECTORS = ROOT / "tests" / "vectors"


def node_binary() -> str | None:
    return shutil.which("node")


def missing_reason() -> str | None:
    """Why the VM cannot run here, or None if it can."""
    if node_binary() is None:
        return "node is not installed; run `make setup`"
    if not (NPM_PACKAGE / "micropython.mjs").is_file():
        return f"{NPM_PACKAGE.relative_to(ROOT)} is missing; run `make setup` (npm ci)"
    return None


def run_micropython(
    script: str,
    mounts: Mapping[str, str] | None = None,
    timeout_s: float = 60,
    *,
    heap: str | None = None,
    args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run MicroPython ``script`` (source text) and return the completed process.

    ``mounts`` maps host paths (files or directories, copied recursively) to absolute VM
    paths, e.g. ``{"firmware/lib": "/lib", "tests/vectors": "/vectors"}``. ``heap`` is the
    initial heap ("256k", "4m"; the port grows it on demand). ``args`` become ``sys.argv[1:]``.
    Raises ``subprocess.TimeoutExpired`` after ``timeout_s``.
    """
    reason = missing_reason()
    if reason is not None:
        raise RuntimeError(f"MicroPython VM unavailable: {reason}")
    node = node_binary()
    assert node is not None
    with tempfile.TemporaryDirectory(prefix="mpvm-") as tmp:
        path = Path(tmp) / "main.py"
        path.write_text(script, encoding="utf-8")
        cmd = [node, str(MPVM)]
        for host, vm in (mounts or {}).items():
            cmd += ["--mount", f"{os.fspath(host)}:{vm}"]
        if heap is not None:
            cmd += ["--heap", heap]
        cmd += [str(path), *args]
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=ROOT,
        )
