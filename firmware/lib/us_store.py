# Persistence. RTC memory (survives deep sleep and WDT reset, 2 KB) holds the wake-to-wake
# state; NVS flash holds what must survive power loss, written as rarely as wear allows.
#
# RTC blob: magic "US"(2) version(1) reserved(1) length(2 LE) crc16(2 LE) | CBOR state map.
# CBOR (already on the board for the protocol) rather than a fixed struct because each node
# kind keeps different fields; the header makes a torn or foreign blob read as "cold boot".
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import us_cbor
from us_cobs import crc16

_MAGIC0 = const(0x55)  # "U"
_MAGIC1 = const(0x53)  # "S"
STATE_VERSION = const(1)
_HDR_LEN = const(8)
RTC_MAX_BYTES = const(2048)

NVS_NAMESPACE = "urbansense"
NVS_FCNT = "fcnt_res"  # docs/PROTOCOL.md 2.1
FCNT_BLOCK = const(256)


def load_rtc(rtc):
    """-> state dict, or None when RTC memory holds no valid blob (power-on, first boot)."""
    try:
        raw = rtc.memory()
    except Exception:
        return None
    if raw is None or len(raw) < _HDR_LEN:
        return None
    if raw[0] != _MAGIC0 or raw[1] != _MAGIC1 or raw[2] != STATE_VERSION:
        return None
    n = raw[4] | (raw[5] << 8)
    if _HDR_LEN + n > len(raw):
        return None
    body = raw[_HDR_LEN:_HDR_LEN + n]
    if crc16(body) != (raw[6] | (raw[7] << 8)):
        return None
    try:
        state = us_cbor.decode(body)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def save_rtc(rtc, state):
    body = us_cbor.encode(state)
    if _HDR_LEN + len(body) > RTC_MAX_BYTES:
        raise ValueError("rtc state too large")
    c = crc16(body)
    blob = bytearray(_HDR_LEN)
    blob[0] = _MAGIC0
    blob[1] = _MAGIC1
    blob[2] = STATE_VERSION
    blob[4] = len(body) & 0xFF
    blob[5] = len(body) >> 8
    blob[6] = c & 0xFF
    blob[7] = c >> 8
    blob.extend(body)
    rtc.memory(blob)


def nvs_get_int(nvs, key, default=0):
    try:
        return nvs.get_i32(key)
    except OSError:  # ENOENT: never written
        return default


def nvs_set_int(nvs, key, value):
    nvs.set_i32(key, value)
    nvs.commit()


def nvs_get_obj(nvs, key, max_len=256):
    """A CBOR item stored as a blob, or None."""
    buf = bytearray(max_len)
    try:
        n = nvs.get_blob(key, buf)
        return us_cbor.decode(bytes(buf[:n]))
    except (OSError, ValueError):
        return None


def nvs_set_obj(nvs, key, obj):
    nvs.set_blob(key, us_cbor.encode(obj))
    nvs.commit()


class FrameCounter:
    """32-bit uplink counter that never repeats (docs/PROTOCOL.md 2.1).

    Counters below the flash reservation may be used; reaching it writes a new one
    (+FCNT_BLOCK) *before* the counter is used, so a power loss skips at most one block.
    """

    def __init__(self, nvs, state):
        self._nvs = nvs
        self._state = state
        if "fc" not in state:  # cold boot: continue from the reservation
            res = nvs_get_int(nvs, NVS_FCNT, 0)
            state["fc"] = res
            state["fr"] = res

    def next(self):
        fc = self._state["fc"]
        if fc >= self._state["fr"]:
            res = fc + FCNT_BLOCK
            nvs_set_int(self._nvs, NVS_FCNT, res)
            self._state["fr"] = res
        self._state["fc"] = fc + 1
        return fc
