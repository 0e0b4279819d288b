# One wake cycle of a node (docs/HAL.md): boot state -> measure -> decide -> send -> persist.
# Node is what a kind sees during the cycle; which pins wake the chip is us_wake's concern.
# Everything hardware goes through `hal`; the module keeps no mutable state of its own, so
# many simulated nodes can share it in one process.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import json
import sys

import us_config
import us_proto
import us_store
import us_wake

FW_VERSION = const(100)  # MMmmpp: 0.1.0
WDT_TIMEOUT_MS = const(30000)
SAFE_MODE_SLEEP_MS = const(600000)  # bad config: retry in 10 min, never a hot boot loop
MIN_SLEEP_S = const(1)
MAX_SLEEP_S = const(86400)
STUCK_PIN_POLL_S = const(60)  # a wake pin already at its level: poll on a timer instead
FAULT_STATUS_S = const(3600)  # a persisting fault repeats its status frame at most hourly
# Two watchdog resets in a row: sleep 1 h, doubling per further one up to a day, so a cycle
# that hangs (30 s at ~25 mA = 0.75 C) cannot drain the cell at the watchdog's pace.
CRASH_BACKOFF_S = const(3600)
CRASH_BACKOFF_MAX_S = const(86400)
KINDS = us_config.KINDS
TRANSPORTS = us_config.TRANSPORTS
ConfigError = us_config.ConfigError
parse_config = us_config.parse

_STATUS_DROP = (us_proto.Q_TEMPERATURE_CC, us_proto.Q_FW_VERSION)


# The board.json keys the firmware reads (the rest is the simulator's power table, ~3 KB):
# only these go into the RTC config cache. tests/test_fw_config_cache.py checks the list
# against every board key the firmware uses.
BOARD_KEYS = ("pins", "rtc_wake_pins", "battery_divider", "pin_wake", "ext0", "lis3mdl_addr", "chip",
              "sensor_boot_ms", "tamper_pull")


def _board_subset(board):
    out = {}
    for k in BOARD_KEYS:
        if k in board:
            out[k] = board[k]
    return out


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
        self._prio = None  # (pin, level, pull, edge): ext0 on the ESP32, first on the C3
        self._group = []  # (pin, pull, edge) sharing _group_level: ext1 / GPIO wake
        self._group_level = 1
        # (ext0 pin or -1, its level, its pull, [(pin, pull)] of ext1/GPIO wake, their level)
        self._plan = (-1, 0, None, [], 1)  # type: tuple[int, int, object, list[tuple[int, object]], int]
        self._armed_before = state.get("aw")  # what the last cycle armed: who woke us
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
        m.Pin(p, m.Pin.OUT, value=1 if on else 0, hold=True)  # hold=: the ESP32 port keeps the level in deep sleep
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

    def temperature_cc(self, calibrated=False):
        """MCU die temperature in centi-degC, or None. calibrated: only a sensor the port
        calibrates (mcu_temperature); the original ESP32's raw_temperature is off by tens
        of degrees from part to part."""
        e = self.hal.esp32
        try:
            if hasattr(e, "mcu_temperature"):
                return int(e.mcu_temperature() * 100)
            if hasattr(e, "raw_temperature") and not calibrated:  # original ESP32: degF
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

    def wake_on_pin(self, pin_no, level, pull=None, edge=False):
        """The cycle's priority wake pin (first caller wins; the others join the set):
        ext0 on the ESP32; on the C3, whose GPIO wake takes one level for every pin, its
        level is the one armed. pull: the input's Pin pull, used when it is read here.
        edge: the caller read the pin at the other level this cycle, so finding it at
        `level` before sleep means it changed since: waking at once is then right, and
        cannot repeat (the next cycle arms the opposite level)."""
        if self._prio is None:
            self._prio = (pin_no, level, pull, edge)
        else:
            self.wake_on_pins([pin_no], level, pull, edge)

    def wake_on_pins(self, pins, level, pull=None, edge=False):
        # ext1 takes one level for all its pins: first come wins (the kind checks the
        # others on every wake anyway).
        if self._group and level != self._group_level:
            return
        self._group_level = level
        for p in pins:
            self._group.append((p, pull, edge))

    def wake_pins(self):
        """Pins that may have woken this cycle (us_wake.woken)."""
        return us_wake.woken(self._armed_before, self.wake)

    def _stuck(self, p, why):
        # Armed, this pin would wake the chip at once, every time (or the port would refuse
        # it): poll on a timer instead, and report a sensor fault.
        print("urbansense: wake pin " + str(p) + " " + why + "; polling every " + str(STUCK_PIN_POLL_S) + " s")
        self.flags |= us_proto.F_SENSOR_FAULT
        self.wake_in(STUCK_PIN_POLL_S)
        return False

    def plan_wakes(self):
        """Settle the wake pins before any frame is built (a fault found here goes out in
        this cycle's status frame); _arm() applies the plan once the radio is off."""
        self._plan = plan = us_wake.plan(self.board, self.hal.machine, self._prio, self._group,
                                         self._group_level, self._stuck)
        self.st["aw"] = [plan[0], [p for p, _ in plan[3]]]

    def _arm(self):
        us_wake.arm(self.hal.esp32, self.hal.machine, self.board, self._plan)

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
    # Imported on demand: a node loads only its own kind's code (heap on the board). Found in
    # sys.modules first: a loaded module needs no __import__ (a slow call on PyPy).
    name = "us_" + kind
    return sys.modules.get(name) or __import__(name)


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


def _safe_mode(msg):
    print("urbansense: SAFE MODE: " + msg + "; retrying in " + str(SAFE_MODE_SLEEP_MS // 1000) + " s")
    return SAFE_MODE_SLEEP_MS


def crash_backoff_s(crashes):
    """Sleep after `crashes` consecutive watchdog resets (0: none, retry at once)."""
    if crashes < 2:
        return 0
    n = crashes - 2
    return CRASH_BACKOFF_MAX_S if n > 4 else min(CRASH_BACKOFF_MAX_S, CRASH_BACKOFF_S << n)


def run_cycle(hal):
    """One wake cycle; returns the deep-sleep time in ms (the caller sleeps)."""
    hal.energy("cpu")
    m = hal.machine
    wdt = m.WDT(timeout=WDT_TIMEOUT_MS)
    rtc = m.RTC()
    state = us_store.load_rtc(rtc)
    cause = m.reset_cause()
    # config.json and board.json are read and checked at every boot that is not a deep-sleep
    # wake (provisioning resets the board: mpremote's soft reset, the reset pin, power-on);
    # a wake from deep sleep runs on the checked copy that boot left in RTC memory.
    cached = us_store.load_config(state) if cause == m.DEEPSLEEP_RESET else None
    section = None
    try:
        if cached is not None:
            cfg, board = cached
            kind = _kind_module(cfg["kind"])
        else:
            cfg = parse_config(_read_json_file(hal, "config.json"))
            board = json.loads(_read_json_file(hal, "board.json"))
            us_config.check_board(cfg, board)
            kind = _kind_module(cfg["kind"])
            check = getattr(kind, "check_config", None)
            if check is not None:
                check(cfg)
            board = _board_subset(board)  # what every later wake sees, from the cache
            section = us_store.config_section(cfg, board)
    except (OSError, ValueError) as exc:
        if state is not None and us_store.CONFIG_CACHE in state:
            us_store.drop_config_cache(rtc)  # the next deep-sleep wake must not run the old one
        if isinstance(exc, ConfigError):
            return _safe_mode(str(exc))
        return _safe_mode(exc.__class__.__name__ + " reading config.json/board.json")
    wdt.feed()

    nvs = hal.esp32.NVS(us_store.NVS_NAMESPACE)
    cold = state is None or state.get("kd") != cfg["kind"]
    if cold or cause != m.DEEPSLEEP_RESET:
        # Downlink state: flash holds the last change. A reset (not a deep sleep) may have
        # come before the cycle saved RTC memory: the newer of the two wins.
        if cold:
            state = {"kd": cfg["kind"]}
        down = us_store.nvs_get_obj(nvs, us_store.NVS_DOWN)
        if isinstance(down, dict) and down.get("d", 0) > state.get("dc", 0):
            state["dn"] = down.get("c") or {}
            state["dc"] = down.get("d", 0)
    if section is not None:
        state[us_store.CONFIG_CACHE] = section
    # RTC memory survives a watchdog reset: count them, and persist the count before
    # anything that could hang again.
    backoff_s = 0
    if cause == m.WDT_RESET:
        state["wr"] = state.get("wr", 0) + 1
        us_store.save_rtc(rtc, state)
        backoff_s = crash_backoff_s(state["wr"])
    fcnt = us_store.FrameCounter(nvs, state)
    node = Node(hal, cfg, board, state, nvs, cold)

    if backoff_s:
        # Report the reset and stay down: the kind's logic is what keeps hanging.
        print("urbansense: " + str(state["wr"]) + " watchdog resets in a row; sleeping " + str(backoff_s) + " s")
        node.wake_in(backoff_s)
    else:
        try:
            kind.run(node)
        except Exception as exc:  # a dead sensor must not stop status frames or the schedule
            print("urbansense: sensor fault: " + exc.__class__.__name__ + " " + str(exc))
            node.flags |= us_proto.F_SENSOR_FAULT
            ri = node.setting("intervals", "report_interval_s", 3600, us_proto.C_REPORT_INTERVAL_S)
            node.wake_in(ri if ri > us_config.MIN_INTERVAL_S else us_config.MIN_INTERVAL_S)
    node.plan_wakes()
    wdt.feed()
    hal.energy("cpu")

    # Status: at every boot that did not come from deep sleep (power-on, watchdog, brown-out,
    # reset pin: RTC memory may have survived, so "cold" alone misses them), daily, and when
    # a fault appears (repeated at most hourly while it lasts and nothing else goes out).
    status_s = node.setting("intervals", "status_s", 86400, us_proto.C_HEARTBEAT_S)
    fault = node.flags & us_proto.F_SENSOR_FAULT
    if not fault:
        state.pop("sf", None)  # the reported fault is gone: a new one is news again
    if (cold or cause != m.DEEPSLEEP_RESET or node.now_s >= state.get("ns", 0)
            or fault and (not state.get("sf") or not node.frames and node.now_s >= state.get("fs", 0))):
        r = _status(node)
        if node.flags:
            r[us_proto.Q_FLAGS] = node.flags
        node.frames.insert(0, (us_proto.T_STATUS, r, _STATUS_DROP))
        state["ns"] = node.now_s + status_s
        if fault:
            state["sf"] = 1
            state["fs"] = node.now_s + FAULT_STATUS_S
    node.wake_at(state.get("ns", node.now_s + status_s))

    transport = cfg["transport"]
    serial = transport == "serial"
    max_len = us_proto.SERIAL_MAX_FRAME if serial else us_proto.BLE_MAX_FRAME
    keys = None
    if node.frames or serial:
        keys = us_proto.Keys(cfg["key_bytes"])
    if serial:
        import us_serial
        backlog_max = cfg["serial"].get("backlog", us_serial.BACKLOG_MAX)
        # Count what the backlog must drop for this cycle's frames first, so they carry it.
        us_serial.make_room(state, len(node.frames), backlog_max)
    out = []
    for ftype, readings, drop in node.frames:
        if serial and state.get("dr"):
            readings[us_proto.Q_DROPPED] = state["dr"]  # cumulative: a lost frame loses no count
        if serial and state.get("dc"):
            readings[us_proto.Q_DCNT] = state["dc"]  # the gateway learns its downlink was applied
        fc = fcnt.next()
        out.append((fc, _encode(keys, cfg, fc, ftype, readings, drop, max_len)))
    if serial:
        us_serial.enqueue(state, out, backlog_max)
    # Persist the counter (and a serial node's backlog) before anything goes on air: a crash
    # after this can neither reuse a counter nor lose a frame.
    us_store.save_rtc(rtc, state)
    wdt.feed()

    if not serial:
        import us_ble
        if out:
            us_ble.send(hal, [f for _, f in out], cfg["ble"])
    else:
        us_serial.send(hal, wdt, cfg, keys, state, len(out), nvs)
        # Acks, the backlog and downlink commands changed the state: persist it again.
        us_store.save_rtc(rtc, state)
    hal.energy("cpu")

    node._arm()
    if not backoff_s and "wr" in state:
        # A whole cycle ran: the next watchdog reset starts a new count.
        del state["wr"]
        us_store.save_rtc(rtc, state)
    wdt.feed()
    return node.sleep_ms()
