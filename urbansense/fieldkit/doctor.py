"""``urbansense node doctor``: a self-test over the raw REPL, nothing written to the board.

Reports the board's MicroPython, free heap and flash, the firmware's verdict on its
config.json/board.json (the self-check provision runs), the firmware files' SHA-256 against
what provision would copy now, and, where the port has the hardware modules (``machine``,
``esp32``), the I2C scan against the sensors the kind needs, the battery voltage, the wake
pins' levels (a pin already at its wake level makes the node poll instead of sleeping) and
whether RTC memory and NVS answer. Parts the board cannot run (the virtual board has no
``machine``) are reported as skipped, not as failed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mpremote.transport import TransportExecError

from urbansense.fieldkit import boardlink, build, nodeconfig
from urbansense.fieldkit._errors import FieldError
from urbansense.fieldkit.provision import SELF_CHECK

# I2C addresses per kind (firmware/lib: us_lis3mdl 0x1C, us_vl53l1x 0x29; the JSN-SR04T is not I2C).
NEEDS_I2C = {"parking": [0x1C], "bin": [0x29], "water": []}

HARDWARE = """
import json, gc, os
r = {}
gc.collect()
r['heap_free'] = gc.mem_free()
try:
    st = os.statvfs('/')
    r['flash_free'] = st[0] * st[3]
except Exception as e:
    r['flash_free'] = None
b = json.loads(open('board.json').read())
p = b.get('pins', {})
try:
    import machine
except ImportError:
    machine = None
if machine is None:
    r['hardware'] = 'skipped: no machine module (not an ESP32 port)'
else:
    try:
        i2c = machine.I2C(0, scl=machine.Pin(p['i2c_scl']), sda=machine.Pin(p['i2c_sda']))
        r['i2c'] = i2c.scan()
    except Exception as e:
        r['i2c_error'] = repr(e)
    try:
        adc = machine.ADC(machine.Pin(p['battery_adc']), atten=machine.ADC.ATTN_11DB)
        d = b.get('battery_divider', {})
        ratio = (d.get('r_top_ohm', 1) + d.get('r_bottom_ohm', 1)) / d.get('r_bottom_ohm', 1)
        r['battery_mv'] = int(adc.read_uv() * ratio / 1000)
    except Exception as e:
        r['battery_error'] = repr(e)
    r['wake_pins'] = {}
    for pin in b.get('rtc_wake_pins', []):
        try:
            r['wake_pins'][str(pin)] = machine.Pin(pin, machine.Pin.IN).value()
        except Exception as e:
            r['wake_pins'][str(pin)] = repr(e)
    try:
        r['rtc_memory_bytes'] = len(machine.RTC().memory())
    except Exception as e:
        r['rtc_error'] = repr(e)
    try:
        import esp32
        esp32.NVS('urbansense')
        r['nvs'] = 'ok'
    except Exception as e:
        r['nvs'] = repr(e)
print(json.dumps(r))
"""


def doctor(port: str, timeout_s: float = 10.0) -> dict[str, Any]:
    with boardlink.connect(port, timeout_s) as link:
        cfg_text = link.read_text("config.json")
        board_text = link.read_text("board.json")
        if cfg_text is None or board_text is None:
            raise FieldError("the board has no config.json/board.json: it is not provisioned",
                             "run `urbansense node provision --port PORT --kind KIND --board BOARD --site SITE`")
        try:
            check = link.run_json(SELF_CHECK)
            hw = link.run_json(HARDWARE)
        except TransportExecError as exc:
            raise FieldError(f"the board could not run the self-test: {exc.error_output.strip()[-200:]}",
                             "is it provisioned? run `urbansense node provision ...` first") from None
        board = json.loads(board_text)
        kind = json.loads(cfg_text).get("kind")
        files = build.node_files(str(board.get("chip", "ESP32")), b"", b"")
        stale = []
        for path, data in files.items():
            if path.endswith(".json"):
                continue
            if link.hash_of(path) != hashlib.sha256(data).digest():
                stale.append(path)
    problems: list[str] = []
    if "error" in check:
        problems.append(f"firmware self-check: {check['error']}")
    if stale:
        problems.append(f"{len(stale)} firmware files differ from this laptop's build: {', '.join(stale[:5])}")
    if "i2c" in hw:
        missing = [a for a in NEEDS_I2C.get(str(kind), []) if a not in hw["i2c"]]
        if missing:
            problems.append("I2C: no answer from " + ", ".join(f"{a:#04x}" for a in missing)
                            + " (sensor unplugged, or its power switch off)")
    for pin, level in hw.get("wake_pins", {}).items():
        if level == 1 and kind == "parking" and int(pin) == nodeconfig.load_board(board["name"])["pins"].get("mag_int"):
            problems.append(f"wake pin {pin} is already high: the node would poll instead of sleeping")
    return {"ok": not problems, "port": port, "kind": kind, "self_check": check, "hardware": hw,
            "stale_files": stale, "problems": problems}
