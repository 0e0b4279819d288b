"""``urbansense node doctor``: a self-test over the raw REPL.

Reports the board's MicroPython, free heap and flash, the firmware's verdict on its
config.json/board.json (the self-check provision runs), whether the firmware on the board is
this laptop's (the copied files' SHA-256, or the frozen image's source stamp), and, where the
port has the hardware modules (``machine``, ``esp32``): the I2C scan against the sensors the
kind needs, a live reading of the kind's sensor (parking: the magnetometer field; bin: the
VL53L1X distance), the battery voltage, the wake pins' levels as found (a pin already at its
wake level makes the node poll instead of sleeping), whether RTC memory holds a valid state
(us_store.load_rtc: a torn blob means the next wake is a cold boot) and NVS answers, with the
frame-counter reservation it holds (-1: the node never ran). The sensors are
switched on through the board's load switch (``sensor_power``) for the test, as the firmware
does, and the switch is left as it was found. The board-side code uses the firmware's own
drivers (us_lis3mdl, us_vl53l1x, us_battery) from the board. Parts the board cannot run (a
virtual board without simulated parts has no ``machine``) are reported as skipped, not failed.

Nothing is written to the board, except by ``calibrate_empty=True`` (parking): the installer's
empty-space step. The baseline is measured with the firmware's own code (us_parking.
calibrate_empty, as the node's install boot measures it), stored in NVS where the firmware
reads it, and RTC memory is cleared so the node's next boot is a cold one that applies it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mpremote.transport import TransportExecError

from urbansense.fieldkit import boardlink, build
from urbansense.fieldkit._errors import FieldError
from urbansense.fieldkit.provision import SELF_CHECK

# I2C addresses per kind (firmware/lib: us_lis3mdl 0x1C, us_vl53l1x 0x29; the JSN-SR04T is not I2C).
NEEDS_I2C = {"parking": [0x1C], "bin": [0x29], "water": []}

HARDWARE = """
import sys, json, gc, os, time
if '/lib' not in sys.path:
    sys.path.append('/lib')
r = {}  # type: dict
gc.collect()
r['heap_free'] = gc.mem_free()
try:
    st = os.statvfs('/')
    r['flash_free'] = st[0] * st[3]
except Exception as e:
    r['flash_free'] = None
b = json.loads(open('board.json').read())
cfg = json.loads(open('config.json').read())
kind = cfg.get('kind')
p = b.get('pins', {})
try:
    import machine, esp32
    ported = True
except ImportError:
    ported = False
if not ported:
    r['hardware'] = 'skipped: no machine module (not an ESP32 port)'
else:
    class _Hal:  # what the firmware's sample_nt takes from a HAL
        def __init__(self):
            self.time = time
            self.machine = machine
    hal = _Hal()
    # The wake pins as found, before the test touches the sensors.
    r['wake_pins'] = {}
    for pin in b.get('rtc_wake_pins', []):
        try:
            r['wake_pins'][str(pin)] = machine.Pin(pin, machine.Pin.IN).value()
        except Exception as e:
            r['wake_pins'][str(pin)] = repr(e)
    sp = p.get('sensor_power')
    was_on = None
    if sp is not None:
        was_on = machine.Pin(sp).value()
        if not was_on:
            machine.Pin(sp, machine.Pin.OUT, value=1)
            time.sleep_ms(5)
    try:
        i2c = machine.SoftI2C(scl=machine.Pin(p['i2c_scl']), sda=machine.Pin(p['i2c_sda']), freq=400000)
        r['i2c'] = i2c.scan()
    except Exception as e:
        r['i2c_error'] = repr(e)
    try:
        if kind == 'parking' and 'i2c' in r:
            import us_lis3mdl, us_parking, us_store
            mag = us_lis3mdl.LIS3MDL(i2c, b.get('lis3mdl_addr', us_lis3mdl.ADDR_SA1_LOW))
            mag.init(us_lis3mdl.ODR_80_HZ)
            r['field_nt'] = us_parking.sample_nt(mag, hal, 4)
            if CALIBRATE:
                base = cfg.get('calibration', {}).get('baseline_nt')
                nvs = esp32.NVS(us_store.NVS_NAMESPACE)
                r['baseline_nt'] = us_parking.calibrate_empty(mag, hal, nvs, base)
                machine.RTC().memory(b'')
        elif kind == 'bin' and 'i2c' in r and cfg.get('sensor', 'vl53l1x') == 'vl53l1x':
            import us_vl53l1x
            tof = us_vl53l1x.VL53L1X(i2c, time.sleep_ms)
            tof.init()
            r['distance_mm'] = tof.measure(3)
    except Exception as e:
        r['sensor_error'] = repr(e)
    if sp is not None and not was_on:
        machine.Pin(sp, machine.Pin.OUT, value=0)
    try:
        import us_battery
        d = b.get('battery_divider', {})
        r['battery_mv'] = us_battery.Battery(machine, p['battery_adc'], d.get('r_top_ohm', 1),
                                             d.get('r_bottom_ohm', 1)).read_mv()
    except Exception as e:
        r['battery_error'] = repr(e)
    try:
        import us_store
        rtc = machine.RTC()
        raw = rtc.memory()
        r['rtc_memory_bytes'] = len(raw)
        if us_store.load_rtc(rtc) is not None:
            r['rtc_state'] = 'valid'
        else:
            r['rtc_state'] = 'empty' if not raw else 'no valid state (the next wake is a cold boot)'
    except Exception as e:
        r['rtc_error'] = repr(e)
    try:
        nvs = esp32.NVS(us_store.NVS_NAMESPACE)
        r['nvs_fcnt_reserved'] = us_store.nvs_get_int(nvs, us_store.NVS_FCNT, -1)
        r['nvs'] = 'ok'
    except Exception as e:
        r['nvs'] = repr(e)
print(json.dumps(r))
"""

# The pin and level that wake a kind's node and that a board must not hold at rest
# (us_parking: the LIS3MDL interrupt, active high). The water meter's pulse pin is not here:
# us_water arms the level opposite to the one it reads, so either level is normal there.
_WAKE_PIN = {"parking": ("mag_int", 1)}


def _problems(kind: str, board: dict[str, Any], cfg: dict[str, Any], hw: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if "i2c" in hw:
        missing = [a for a in NEEDS_I2C.get(kind, []) if a not in hw["i2c"]]
        if missing:
            out.append("I2C: no answer from " + ", ".join(f"{a:#04x}" for a in missing)
                       + " (sensor unplugged, or its power switch off)")
    elif "i2c_error" in hw:
        out.append(f"I2C bus: {hw['i2c_error']}")
    if "sensor_error" in hw:
        out.append(f"sensor reading failed: {hw['sensor_error']}")
    if "battery_error" in hw:
        out.append(f"battery voltage unreadable: {hw['battery_error']}")
    elif "battery_mv" in hw and hw["battery_mv"] < int(cfg.get("thresholds", {}).get("low_battery_mv", 3300)):
        out.append(f"battery at {hw['battery_mv']} mV, below the low mark: replace the cell")
    wake = _WAKE_PIN.get(kind)
    if wake is not None and "wake_pins" in hw:
        pin = board.get("pins", {}).get(wake[0])
        level = wake[1]
        if pin is not None and hw["wake_pins"].get(str(pin)) == level:
            out.append(f"wake pin {pin} ({wake[0]}) is already at its wake level {level}: "
                       "the node would poll on a timer instead of sleeping (check the wiring)")
    if "nvs" in hw and hw["nvs"] != "ok":
        out.append(f"NVS: {hw['nvs']}")
    return out


def doctor(port: str, timeout_s: float = 10.0, *, calibrate_empty: bool = False) -> dict[str, Any]:
    with boardlink.connect(port, timeout_s) as link:
        cfg_text = link.read_text("config.json")
        board_text = link.read_text("board.json")
        if cfg_text is None or board_text is None:
            raise FieldError("the board has no config.json/board.json: it is not provisioned",
                             "run `urbansense node provision --port PORT --kind KIND --board BOARD --site SITE`")
        try:
            cfg, board = json.loads(cfg_text), json.loads(board_text)
            kind = str(cfg.get("kind"))
        except (ValueError, AttributeError):
            raise FieldError("the board's config.json or board.json is damaged (not a JSON object)",
                             "provision the board again: it rewrites both and keeps the node's id "
                             "when config.json still names it") from None
        if calibrate_empty and kind != "parking":
            raise FieldError(f"--calibrate-empty is the parking sensor's step; this board is a {kind} node",
                             "leave out --calibrate-empty", exit_code=2)
        try:
            check = link.run_json(SELF_CHECK)
            hw = link.run_json(f"CALIBRATE = {calibrate_empty}\n" + HARDWARE)
        except TransportExecError as exc:
            raise FieldError(f"the board could not run the self-test: {exc.error_output.strip()[-200:]}",
                             "is it provisioned? run `urbansense node provision ...` first") from None
        frozen = build.query_frozen(link)
        stale: list[str] = []
        if frozen is None:
            for path, data in build.node_files(str(board.get("chip", "ESP32")), b"", b"").items():
                if not path.endswith(".json") and link.hash_of(path) != hashlib.sha256(data).digest():
                    stale.append(path)
        elif frozen.get("source") != build.source_digest():
            stale.append("frozen image")
    problems: list[str] = []
    if "error" in check:
        problems.append(f"firmware self-check: {check['error']}")
    if stale:
        problems.append(f"{len(stale)} firmware files differ from this laptop's build: {', '.join(stale[:5])}")
    problems += _problems(kind, board, cfg, hw)
    if calibrate_empty and "baseline_nt" not in hw:
        problems.append("empty-space calibration not done: " + hw.get("sensor_error", hw.get("hardware", "no magnetometer")))
    return {"ok": not problems, "port": port, "kind": kind, "self_check": check, "hardware": hw,
            "frozen": frozen, "stale_files": stale, "problems": problems}
