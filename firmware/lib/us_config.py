# config.json -> a checked dict. A bad value sends the node to safe mode with a message that
# names the key (never the key material), instead of a hot loop or a crash in the field: an
# interval of 0 once gave a ZeroDivisionError and then a 1 s wake loop.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import binascii
import json

KINDS = ("parking", "bin", "water")
TRANSPORTS = ("ble", "serial")
SENSORS = ("vl53l1x", "jsnsr04t")
SECTIONS = ("intervals", "thresholds", "calibration", "ble", "serial")
MIN_INTERVAL_S = const(60)  # nothing a node does periodically needs to be more frequent
MAX_INTERVAL_S = const(86400)
MAX_THRESHOLDS = const(8)  # the gateway's limit for the thresholds command
MAG_FULL_SCALE_NT = const(400000)  # LIS3MDL +-4 gauss
MAX_GPIO = const(48)  # the highest GPIO number of any ESP32 chip (ESP32-S3: GPIO0..48)
# GPIO6..11 of an original ESP32 drive the SPI flash inside WROOM-32/32E and WROVER modules
# (Espressif ESP32-WROOM-32E datasheet, section "Pin Definitions": pins 17..22 "connected to
# the SPI flash integrated on the module"). machine.UART(1) without tx/rx falls back to
# GPIO10 (tx) / GPIO9 (rx) on that chip (micropython ports/esp32/machine_uart.c, UART1 defaults
# from ESP-IDF's soc/uart_channel.h), so a serial node there must name its pins.
FLASH_GPIOS = (6, 7, 8, 9, 10, 11)

# (section, key, lowest, highest) of every integer setting; an absent key takes the default.
# Unknown keys are ignored, so a config written for newer firmware still boots older firmware.
_INTS = (
    ("intervals", "report_interval_s", MIN_INTERVAL_S, MAX_INTERVAL_S),
    ("intervals", "status_s", MIN_INTERVAL_S, 7 * MAX_INTERVAL_S),
    ("intervals", "heartbeat_s", MIN_INTERVAL_S, MAX_INTERVAL_S),
    ("intervals", "measure_s", MIN_INTERVAL_S, MAX_INTERVAL_S),
    ("intervals", "occupied_poll_s", MIN_INTERVAL_S, MAX_INTERVAL_S),
    # The confirmation wake must follow the first reading while the car is still there.
    ("intervals", "confirm_gap_s", 2, MIN_INTERVAL_S),
    ("thresholds", "mag_threshold_ut", 2, 400),
    ("thresholds", "mag_release_ut", 1, 399),
    ("thresholds", "confirm_samples", 1, 8),
    ("thresholds", "low_battery_mv", 2000, 4200),
    ("thresholds", "burst_lph", 1, 100000),
    ("thresholds", "pings", 1, 15),
    ("thresholds", "reject_mm", 1, 4000),
    ("thresholds", "hysteresis_pct", 0, 20),
    ("thresholds", "empty_drop_pct", 1, 100),
    ("calibration", "ml_per_pulse", 1, 1000000),
    ("calibration", "index_l", 0, 999999999),
    ("calibration", "pulse_active_level", 0, 1),
    ("calibration", "empty_mm", 1, 8000),
    ("calibration", "full_mm", 0, 8000),
    ("calibration", "min_mm", 0, 8000),
    ("calibration", "max_mm", 1, 8000),
    # RTC memory holds the backlog: 8 frames of <= 64 bytes fit its 2 KB with the rest.
    ("serial", "backlog", 1, 8),
    ("serial", "ack_timeout_ms", 10, 5000),
    ("serial", "baudrate", 1200, 2000000),
    ("serial", "uart", 0, 2),
    ("serial", "tx", 0, MAX_GPIO),
    ("serial", "rx", 0, MAX_GPIO),
    ("ble", "interval_us", 20000, 10240000),  # BLE advertising interval limits
    ("ble", "burst_ms", 20, 5000),
    ("ble", "company_id", 0, 0xFFFF),
)


class ConfigError(ValueError):
    pass


def need(cond, msg):
    if not cond:
        raise ConfigError(msg)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def in_range(v, lo, hi):
    return is_int(v) and lo <= v <= hi


def _range_msg(name, lo, hi):
    return name + " must be an integer " + str(lo) + ".." + str(hi)


def check_int(cfg, sect, key, lo, hi):
    v = cfg[sect].get(key)
    if v is not None:
        need(in_range(v, lo, hi), _range_msg(sect + "." + key, lo, hi))


def parse(text):
    """config.json text -> dict with the key as bytes under "key_bytes". Messages never echo the key."""
    try:
        cfg = json.loads(text)
    except ValueError:
        raise ConfigError("config.json is not valid JSON")
    need(isinstance(cfg, dict), "config.json must hold an object")
    nid = cfg.get("node_id")
    need(in_range(nid, 0, 0xFFFFFFFF), "node_id must be an integer 0..4294967295")
    key = cfg.get("key")
    need(isinstance(key, str) and len(key) == 32, "key must be 32 hex characters")
    try:
        cfg["key_bytes"] = binascii.unhexlify(key)
    except ValueError:
        raise ConfigError("key must be 32 hex characters")
    need(cfg.get("kind") in KINDS, "kind must be one of parking, bin, water")
    need(isinstance(cfg.get("board"), str), "board must be a board name")
    cfg.setdefault("transport", "ble")
    need(cfg["transport"] in TRANSPORTS, "transport must be ble or serial")
    need(cfg.get("sensor", "vl53l1x") in SENSORS, "sensor must be vl53l1x or jsnsr04t")
    for sect in SECTIONS:
        cfg.setdefault(sect, {})
        need(isinstance(cfg[sect], dict), sect + " must be an object")
    for sect, k, lo, hi in _INTS:
        check_int(cfg, sect, k, lo, hi)
    fp = cfg["intervals"].get("free_poll_s")
    need(fp is None or fp == 0 or in_range(fp, MIN_INTERVAL_S, MAX_INTERVAL_S),
         "intervals.free_poll_s must be 0 (off) or an integer 60..86400")
    th = cfg["thresholds"].get("fill_pct")
    need(th is None or isinstance(th, list) and 0 < len(th) <= MAX_THRESHOLDS
         and all(in_range(x, 1, 100) for x in th),
         "thresholds.fill_pct must be a list of 1..8 integers 1..100")
    cal = cfg["calibration"]
    need(isinstance(cal.get("tamper", False), bool), "calibration.tamper must be true or false")
    base = cal.get("baseline_nt")
    need(base is None or isinstance(base, list) and len(base) == 3
         and all(in_range(v, -MAG_FULL_SCALE_NT, MAG_FULL_SCALE_NT) for v in base),
         "calibration.baseline_nt must be 3 integers within +-400000")
    ser = cfg["serial"]
    # One without the other once raised KeyError at every wake (the node slept and retried).
    need("rx" in ser or "tx" not in ser, "serial.rx must be set with serial.tx (the UART's receive pin)")
    need("tx" in ser or "rx" not in ser, "serial.tx must be set with serial.rx (the UART's transmit pin)")
    return cfg


def check_board(cfg, board):
    """The checks that need board.json (the firmware reads it after config.json): a serial
    node's UART pins. Pins absent from config.json come from the board's pins "uart_tx" and
    "uart_rx" (where the carrier board wires its serial connector) and are written into cfg.
    On an original ESP32 (board "chip" "ESP32", the default) a serial node without pins, or
    with a pin of the module's flash, is a config error: UART(1)'s default pins are the flash."""
    need(isinstance(board, dict), "board.json must hold an object")
    pins = board.get("pins")
    need(isinstance(pins, dict), "board.json needs a pins object")
    if cfg.get("transport") != "serial":
        return
    ser = cfg["serial"]
    if "tx" not in ser and "uart_tx" in pins and "uart_rx" in pins:
        ser["tx"] = pins["uart_tx"]
        ser["rx"] = pins["uart_rx"]
        check_int(cfg, "serial", "tx", 0, MAX_GPIO)
        check_int(cfg, "serial", "rx", 0, MAX_GPIO)
    if board.get("chip", "ESP32") != "ESP32":
        return
    need("tx" in ser, "serial.tx and serial.rx must name the UART pins on an ESP32 (or the board "
         "its uart_tx/uart_rx pins): UART(1)'s defaults GPIO9/10 are the module's flash")
    need(ser["tx"] not in FLASH_GPIOS and ser["rx"] not in FLASH_GPIOS,
         "serial.tx/serial.rx must not be GPIO6..11 on an ESP32 (the module's flash)")
