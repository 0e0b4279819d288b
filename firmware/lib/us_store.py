# Persistence. RTC memory (survives deep sleep and WDT reset, 2 KB) holds the wake-to-wake
# state; NVS flash holds what must survive power loss, written as rarely as wear allows.
#
# RTC blob: magic "US"(2) version(1) crc kind(1) length(2 LE) crc(4 LE) | JSON state map.
# JSON rather than CBOR because MicroPython (and CPython) implement it in C: decoded once at
# wake and encoded once per cycle (before anything goes on air), it costs a fraction of the
# pure-Python CBOR codec. The two fields JSON cannot hold are mapped on the way: the serial
# backlog's frames (bytes <-> hex text) and the downlink overrides (int keys <-> text keys).
# After the state body, an optional config section: "C"(1) length(2 LE) crc(4 LE) | JSON
# [config, board subset], validated at the last boot that was not a deep-sleep wake (see
# us_node.run_cycle). It is kept as the bytes that were read and written back unchanged, so a
# wake neither re-reads and re-validates config.json/board.json nor re-encodes the cache.
# The CRC is binascii.crc32 (C, present on the ESP32 port and the WebAssembly VM); a port
# without it falls back to the pure-Python CRC-16 and says so in the header, so a blob is
# never checked with the wrong polynomial. The header makes a torn or foreign blob read as
# "cold boot".
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import binascii
import json

import us_cbor
from us_cobs import crc16

_MAGIC0 = const(0x55)  # "U"
_MAGIC1 = const(0x53)  # "S"
STATE_VERSION = const(2)
_HDR_LEN = const(10)
RTC_MAX_BYTES = const(2048)
# The config cache goes in only while the whole blob stays under this (a serial node with a
# full backlog then re-reads its files at every wake instead): RTC slow memory is shared.
RTC_CACHE_MAX_BYTES = const(1536)
_CFG_TAG = const(0x43)  # "C"
_CFG_HDR_LEN = const(7)
CONFIG_CACHE = "_c"  # state key of the cached config section (bytes, not in the JSON body)
_SECTIONS = ("intervals", "thresholds", "calibration", "ble", "serial")  # us_config.SECTIONS
_CRC_KIND = 1 if hasattr(binascii, "crc32") else 0  # 1: crc32, 0: crc16


def _crc(body):
    if _CRC_KIND:
        return binascii.crc32(body) & 0xFFFFFFFF
    return crc16(body)


NVS_NAMESPACE = "urbansense"
NVS_FCNT = "fcnt_res"  # docs/PROTOCOL.md 2.1
NVS_DOWN = "down"  # applied downlink commands + DCnt, written only when they change
FCNT_BLOCK = const(256)


def load_rtc(rtc):
    """-> state dict, or None when RTC memory holds no valid blob (power-on, first boot)."""
    try:
        raw = rtc.memory()
    except Exception:
        return None
    if raw is None or len(raw) < _HDR_LEN:
        return None
    if raw[0] != _MAGIC0 or raw[1] != _MAGIC1 or raw[2] != STATE_VERSION or raw[3] != _CRC_KIND:
        return None
    n = raw[4] | (raw[5] << 8)
    if _HDR_LEN + n > len(raw):
        return None
    body = raw[_HDR_LEN:_HDR_LEN + n]
    if _crc(body) != raw[6] | (raw[7] << 8) | (raw[8] << 16) | (raw[9] << 24):
        return None
    try:
        state = json.loads(body.decode())  # str: CPython's loads would sniff a bytes' encoding
    except ValueError:  # a UnicodeError is one
        return None
    if not isinstance(state, dict):
        return None
    tail = raw[_HDR_LEN + n:]
    if len(tail) > _CFG_HDR_LEN and tail[0] == _CFG_TAG:
        state[CONFIG_CACHE] = bytes(tail)
    try:
        dn = state.get("dn")
        if dn:
            state["dn"] = {int(k): v for k, v in dn.items()}
        bl = state.get("bl")
        if bl:
            state["bl"] = [[e[0], binascii.unhexlify(e[1])] for e in bl]
    except (ValueError, TypeError, AttributeError, IndexError):
        return None
    return state


def save_rtc(rtc, state):
    dn = state.get("dn")
    bl = state.get("bl")
    cache = state.get(CONFIG_CACHE)
    if dn or bl:  # only then is the state mapped on a copy
        state = dict(state)
        if dn:
            state["dn"] = {str(k): v for k, v in dn.items()}
        if bl:
            state["bl"] = [[e[0], binascii.hexlify(e[1]).decode()] for e in bl]
    if cache is not None:  # kept out of the JSON body for the dump (no copy of the state)
        del state[CONFIG_CACHE]
        try:
            body = json.dumps(state, separators=(",", ":")).encode()
        finally:
            state[CONFIG_CACHE] = cache
    else:
        body = json.dumps(state, separators=(",", ":")).encode()
    if _HDR_LEN + len(body) > RTC_MAX_BYTES:
        raise ValueError("rtc state too large")
    c = _crc(body)
    blob = bytearray(_HDR_LEN)
    blob[0] = _MAGIC0
    blob[1] = _MAGIC1
    blob[2] = STATE_VERSION
    blob[3] = _CRC_KIND
    blob[4] = len(body) & 0xFF
    blob[5] = len(body) >> 8
    blob[6] = c & 0xFF
    blob[7] = (c >> 8) & 0xFF
    blob[8] = (c >> 16) & 0xFF
    blob[9] = (c >> 24) & 0xFF
    blob.extend(body)
    if cache is not None and len(blob) + len(cache) <= RTC_CACHE_MAX_BYTES:
        blob.extend(cache)
    rtc.memory(blob)


def drop_config_cache(rtc):
    """Forget the cached config (a boot found config.json/board.json bad: the next wake
    from deep sleep must not run on the old one)."""
    try:
        raw = rtc.memory()
    except Exception:
        return
    if raw is None or len(raw) < _HDR_LEN:
        return
    end = _HDR_LEN + (raw[4] | (raw[5] << 8))
    if len(raw) > end:
        rtc.memory(raw[:end])


def config_section(cfg, board):
    """-> the config cache section for a checked config (without the key's bytes and empty
    sections, which load_config restores) and the board keys the firmware reads."""
    c = {}
    for k in cfg:
        v = cfg[k]
        if k != "key_bytes" and not (k in _SECTIONS and not v):
            c[k] = v
    body = json.dumps([c, board], separators=(",", ":")).encode()
    crc = _crc(body)
    return bytes((_CFG_TAG, len(body) & 0xFF, len(body) >> 8, crc & 0xFF, (crc >> 8) & 0xFF,
                  (crc >> 16) & 0xFF, (crc >> 24) & 0xFF)) + body


def load_config(state):
    """-> (config, board) from the state's config cache, or None (absent, torn, foreign)."""
    sec = state.get(CONFIG_CACHE) if state is not None else None
    if not sec:
        return None
    n = sec[1] | (sec[2] << 8)
    body = sec[_CFG_HDR_LEN:_CFG_HDR_LEN + n]
    if len(body) != n or _crc(body) != sec[3] | (sec[4] << 8) | (sec[5] << 16) | (sec[6] << 24):
        return None
    try:
        cfg, board = json.loads(body.decode())
        cfg["key_bytes"] = binascii.unhexlify(cfg["key"])
        for k in _SECTIONS:
            if k not in cfg:
                cfg[k] = {}
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(board, dict):
        return None
    return cfg, board


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
