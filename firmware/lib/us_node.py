# One wake cycle of a node (docs/HAL.md): boot state -> measure -> decide -> send -> persist.
# Everything hardware goes through `hal`; the module keeps no mutable state of its own, so
# many simulated nodes can share it in one process.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import binascii
import json

import us_proto
import us_store

FW_VERSION = const(100)  # MMmmpp: 0.1.0
WDT_TIMEOUT_MS = const(30000)
SAFE_MODE_SLEEP_MS = const(600000)  # bad config: retry in 10 min, never a hot boot loop
MIN_SLEEP_S = const(1)
MAX_SLEEP_S = const(86400)
KINDS = ("parking", "bin", "water")
TRANSPORTS = ("ble", "serial")

# Downlink commands land here and override config.json (persisted in NVS "down").
_NVS_DOWN = "down"
_STATUS_DROP = (us_proto.Q_TEMPERATURE_CC, us_proto.Q_FW_VERSION)


class ConfigError(ValueError):
    pass


def _need(cond, msg):
    if not cond:
        raise ConfigError(msg)


def parse_config(text):
    """config.json text -> dict with the key as bytes under "key_bytes". Messages never echo the key."""
    try:
        cfg = json.loads(text)
    except ValueError:
        raise ConfigError("config.json is not valid JSON")
    _need(isinstance(cfg, dict), "config.json must hold an object")
    nid = cfg.get("node_id")
    _need(isinstance(nid, int) and not isinstance(nid, bool) and 0 <= nid <= 0xFFFFFFFF,
          "node_id must be an integer 0..4294967295")
    key = cfg.get("key")
    _need(isinstance(key, str) and len(key) == 32, "key must be 32 hex characters")
    try:
        cfg["key_bytes"] = binascii.unhexlify(key)
    except ValueError:
        raise ConfigError("key must be 32 hex characters")
    _need(cfg.get("kind") in KINDS, "kind must be one of parking, bin, water")
    _need(isinstance(cfg.get("board"), str), "board must be a board name")
    cfg.setdefault("transport", "ble")
    _need(cfg["transport"] in TRANSPORTS, "transport must be ble or serial")
    for sect in ("intervals", "thresholds", "calibration", "ble", "serial"):
        cfg.setdefault(sect, {})
        _need(isinstance(cfg[sect], dict), sect + " must be an object")
    return cfg


def _read_json_file(hal, path):
    with hal.open(path, "r") as f:
        return f.read()


class Node:
    """What a node kind sees during one cycle."""

    def __init__(self, hal, cfg, board, state, nvs, cold):
        self.hal = hal
        self.cfg = cfg
        self.board = board
        self.st = state
        self.nvs = nvs
        self.cold = cold
        self.now_s = hal.time.time()
        self.wake = hal.machine.wake_reason()
        self.kst = state.setdefault("k", {})
        self.flags = 0
        self.frames = []  # (ftype, readings, drop order)
        self._deadlines = []
        self._ext0 = None
        self._ext1 = []
        self._ext1_level = 1
        self._i2c = None
        self._battery_mv = None
        self._battery = None
        self.down = state.get("dn") or {}

    # --- configuration with downlink overrides ---
    def setting(self, section, name, default, cmd=None):
        if cmd is not None and cmd in self.down:
            return self.down[cmd]
        return self.cfg[section].get(name, default)

    def pin(self, name):
        p = self.board.get("pins", {}).get(name)
        if p is None:
            raise ConfigError("board has no pin " + name)
        return p

    def energy(self, state):
        self.hal.energy(state)

    def sensor_power(self, on):
        """Drive the board's sensor load switch (pin "sensor_power", active high) and hold
        the level through deep sleep (GPIO hold; the city board uses an RTC GPIO for it).
        -> True when it was off and is now switched on (the caller waits the part's boot
        time), False otherwise (already on, switched off, or the board has no switch)."""
        p = self.board.get("pins", {}).get("sensor_power")
        if p is None:
            return False
        m = self.hal.machine
        was = self.st.get("pw", 0)
        m.Pin(p, m.Pin.OUT, value=1 if on else 0, hold=True)  # type: ignore[call-arg]  # ESP32 port: hold=
        self.st["pw"] = 1 if on else 0
        return bool(on) and not was

    # --- hardware shared by the kinds ---
    def i2c(self):
        if self._i2c is None:
            m = self.hal.machine
            self._i2c = m.SoftI2C(scl=m.Pin(self.pin("i2c_scl")), sda=m.Pin(self.pin("i2c_sda")),
                                  freq=400000)
        return self._i2c

    def battery_mv(self):
        if self._battery_mv is None:
            import us_battery
            div = self.board.get("battery_divider", {})
            self._battery = us_battery.Battery(
                self.hal.machine, self.pin("battery_adc"), div.get("r_top_ohm", 1),
                div.get("r_bottom_ohm", 1), self.setting("thresholds", "low_battery_mv", 3300))
            self._battery_mv = self._battery.read_mv()
            if self._battery.is_low(self._battery_mv):
                self.flags |= us_proto.F_LOW_BATTERY
        return self._battery_mv

    def temperature_cc(self):
        e = self.hal.esp32
        try:
            if hasattr(e, "mcu_temperature"):
                return int(e.mcu_temperature() * 100)
            if hasattr(e, "raw_temperature"):  # original ESP32: degF, uncalibrated
                return (e.raw_temperature() - 32) * 500 // 9
        except Exception:
            pass
        return None

    # --- what the kind decides ---
    def send(self, ftype, readings, drop=()):
        self.frames.append((ftype, readings, drop))

    def wake_in(self, seconds):
        self._deadlines.append(self.now_s + seconds)

    def wake_at(self, t_s):
        self._deadlines.append(t_s)

    def wake_on_pin(self, pin_no, level):
        if self.board.get("ext0", True) and self._ext0 is None:
            self._ext0 = (pin_no, level)
        else:
            self.wake_on_pins([pin_no], level)

    def wake_on_pins(self, pins, level):
        # ext1 takes one level for all its pins: first come wins (the kind checks the
        # others on every wake anyway).
        if self._ext1 and level != self._ext1_level:
            return
        self._ext1_level = level
        self._ext1.extend(pins)

    def _arm(self):
        e = self.hal.esp32
        m = self.hal.machine
        if self.board.get("pin_wake") == "gpio":
            # ESP32-C3: no ext0/ext1 in the port, esp32.wake_on_gpio instead (one level for
            # all pins, like ext1; only the board's rtc_wake_pins can wake from deep sleep).
            pins = list(self._ext1)
            lvl = self._ext1_level
            if self._ext0 is not None and (not pins or self._ext0[1] == lvl):
                pins.insert(0, self._ext0[0])
                lvl = self._ext0[1]
            if pins:
                e.wake_on_gpio([m.Pin(p, m.Pin.IN) for p in pins],
                               e.WAKEUP_ANY_HIGH if lvl else e.WAKEUP_ALL_LOW)
            else:
                e.wake_on_gpio(None, e.WAKEUP_ANY_HIGH)
            return
        if self.board.get("ext0", True):
            if self._ext0 is None:
                e.wake_on_ext0(None, 0)
            else:
                e.wake_on_ext0(m.Pin(self._ext0[0], m.Pin.IN), self._ext0[1])
        if self._ext1:
            lvl = e.WAKEUP_ANY_HIGH if self._ext1_level else e.WAKEUP_ALL_LOW
            e.wake_on_ext1([m.Pin(p, m.Pin.IN) for p in self._ext1], lvl)
        else:
            e.wake_on_ext1(None, e.WAKEUP_ANY_HIGH)

    def sleep_ms(self):
        t = self.now_s + MAX_SLEEP_S
        for d in self._deadlines:
            if d < t:
                t = d
        s = t - self.now_s
        if s < MIN_SLEEP_S:
            s = MIN_SLEEP_S
        return s * 1000


def _status(node):
    r = {us_proto.Q_BATTERY_MV: node.battery_mv(), us_proto.Q_RESET_CAUSE: node.hal.machine.reset_cause(),
         us_proto.Q_FW_VERSION: FW_VERSION}
    t = node.temperature_cc()
    if t is not None:
        r[us_proto.Q_TEMPERATURE_CC] = t
    return r


def _kind_module(kind):
    # Imported on demand: a node loads only its own kind's code (heap on the board).
    return __import__("us_" + kind)


def _encode(keys, cfg, fc, ftype, readings, drop, max_len):
    r = dict(readings)
    i = 0
    while True:
        try:
            return us_proto.encode_uplink(keys, cfg["node_id"], fc, ftype, r, max_len)
        except ValueError:
            if i >= len(drop):
                raise
            r.pop(drop[i], None)
            i += 1


def run_cycle(hal):
    """One wake cycle; returns the deep-sleep time in ms (the caller sleeps)."""
    hal.energy("cpu")
    wdt = hal.machine.WDT(timeout=WDT_TIMEOUT_MS)
    try:
        cfg = parse_config(_read_json_file(hal, "config.json"))
        board = json.loads(_read_json_file(hal, "board.json"))
        if not isinstance(board, dict):
            raise ConfigError("board.json must hold an object")
    except (OSError, ValueError) as exc:
        msg = str(exc) if isinstance(exc, ConfigError) else exc.__class__.__name__ + " reading config.json/board.json"
        print("urbansense: SAFE MODE: " + msg + "; retrying in " + str(SAFE_MODE_SLEEP_MS // 1000) + " s")
        return SAFE_MODE_SLEEP_MS
    wdt.feed()

    rtc = hal.machine.RTC()
    nvs = hal.esp32.NVS(us_store.NVS_NAMESPACE)
    state = us_store.load_rtc(rtc)
    cold = state is None or state.get("kd") != cfg["kind"]
    if cold:
        state = {"kd": cfg["kind"]}
        down = us_store.nvs_get_obj(nvs, _NVS_DOWN)
        if isinstance(down, dict):
            state["dn"] = down.get("c") or {}
            state["dc"] = down.get("d", 0)
    fcnt = us_store.FrameCounter(nvs, state)
    node = Node(hal, cfg, board, state, nvs, cold)

    try:
        _kind_module(cfg["kind"]).run(node)
    except Exception as exc:  # a dead sensor must not stop status frames or the schedule
        print("urbansense: sensor fault: " + exc.__class__.__name__ + " " + str(exc))
        node.flags |= us_proto.F_SENSOR_FAULT
        node.wake_in(node.setting("intervals", "report_interval_s", 3600, us_proto.C_REPORT_INTERVAL_S))
    wdt.feed()
    hal.energy("cpu")

    status_s = node.setting("intervals", "status_s", 86400, us_proto.C_HEARTBEAT_S)
    if cold or node.now_s >= state.get("ns", 0) or node.flags & us_proto.F_SENSOR_FAULT and node.frames == []:
        r = _status(node)
        if node.flags:
            r[us_proto.Q_FLAGS] = node.flags
        node.frames.insert(0, (us_proto.T_STATUS, r, _STATUS_DROP))
        state["ns"] = node.now_s + status_s
    node.wake_at(state.get("ns", node.now_s + status_s))

    transport = cfg["transport"]
    max_len = us_proto.BLE_MAX_FRAME if transport == "ble" else us_proto.SERIAL_MAX_FRAME
    keys = None
    if node.frames or transport == "serial":
        keys = us_proto.Keys(cfg["key_bytes"])
    out = []
    for ftype, readings, drop in node.frames:
        if transport == "serial" and state.get("dr"):
            readings[us_proto.Q_DROPPED] = state.pop("dr")
        fc = fcnt.next()
        out.append((fc, _encode(keys, cfg, fc, ftype, readings, drop, max_len)))
    # Persist the counter before anything goes on air: a crash after this cannot reuse it.
    us_store.save_rtc(rtc, state)
    wdt.feed()

    if transport == "ble":
        import us_ble
        if out:
            us_ble.send(hal, [f for _, f in out], cfg["ble"])
    else:
        import us_serial
        if us_serial.send(hal, wdt, cfg, keys, state, out):
            us_store.nvs_set_obj(nvs, _NVS_DOWN, {"d": state.get("dc", 0), "c": state.get("dn", {})})
        # Acks, the backlog and downlink commands changed the state: persist it again.
        us_store.save_rtc(rtc, state)
    hal.energy("cpu")

    node._arm()  # reads nothing from the state: a BLE node's state was saved once, above
    wdt.feed()
    return node.sleep_ms()
