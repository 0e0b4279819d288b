# Waste bin: distance to the refuse surface -> fill %, reported at threshold crossings,
# on emptying (a large drop) and periodically. Pure helpers first, wake cycle in run().
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import us_proto

DEFAULT_MEASURE_S = const(900)
DEFAULT_REPORT_S = const(3600)
DEFAULT_PINGS = const(5)
DEFAULT_REJECT_MM = const(100)
DEFAULT_HYST_PCT = const(3)
DEFAULT_EMPTY_DROP_PCT = const(30)
DEFAULT_THRESHOLDS = (50, 75, 90)
# After the load switch turns the ranger on: VL53L1X tBOOT is 1.2 ms max (DS12385); the
# JSN-SR04T sheet gives none (UNVERIFIED: measure). The ToF driver also polls its boot flag.
SENSOR_BOOT_MS = const(2)
DEFAULT_EMPTY_MM = const(1200)
DEFAULT_FULL_MM = const(250)
DEFAULT_MAX_MM = const(4000)
# Nearest valid reading. JSN-SR04T: vendor sheets give a 20-25 cm blind zone (echoes closer
# than that come back inside the transducer's ring-down; UNVERIFIED figure, measure the unit).
# VL53L1X ranges from a few centimetres (DS12385).
JSN_MIN_MM = const(200)
TOF_MIN_MM = const(20)


def default_min_mm(sensor):
    return JSN_MIN_MM if sensor == "jsnsr04t" else TOF_MIN_MM


def check_config(cfg):
    import us_config

    cal = cfg["calibration"]
    lo = cal.get("min_mm", default_min_mm(cfg.get("sensor", "vl53l1x")))
    hi = cal.get("max_mm", DEFAULT_MAX_MM)
    full = cal.get("full_mm", DEFAULT_FULL_MM)
    empty = cal.get("empty_mm", DEFAULT_EMPTY_MM)
    us_config.need(lo <= full < empty <= hi,
                   "calibration needs min_mm (" + str(lo) + ") <= full_mm (" + str(full) + ") < empty_mm ("
                   + str(empty) + ") <= max_mm (" + str(hi) + ")")


def median(values):
    s = sorted(values)
    n = len(s)
    if n == 0:
        return None
    if n & 1:
        return s[n // 2]
    return (s[n // 2 - 1] + s[n // 2]) // 2


def robust_distance_mm(samples, min_mm, max_mm, reject_mm):
    """Median after dropping failed pings, out-of-range values and outliers (> reject_mm
    from the first median). None unless more than half of the pings survive."""
    ok = [s for s in samples if s is not None and min_mm <= s <= max_mm]
    if 2 * len(ok) <= len(samples):
        return None
    m = median(ok)
    kept = [s for s in ok if abs(s - m) <= reject_mm]
    if 2 * len(kept) <= len(samples):
        return None
    return median(kept)


def fill_pct(distance_mm, empty_mm, full_mm):
    """empty_mm: sensor to bin floor; full_mm: sensor to the fill line (>= blind zone)."""
    span = empty_mm - full_mm
    if span <= 0:
        raise ValueError("bin: empty_mm must exceed full_mm")
    pct = (empty_mm - distance_mm) * 100 // span
    return 0 if pct < 0 else 100 if pct > 100 else pct


class FillLogic:
    """Threshold crossings with hysteresis, emptying detection. State dict in RTC memory."""

    def __init__(self, st, thresholds=DEFAULT_THRESHOLDS, hyst_pct=DEFAULT_HYST_PCT,
                 empty_drop_pct=DEFAULT_EMPTY_DROP_PCT):
        self.st = st
        self.th = sorted(thresholds)
        self.hyst = hyst_pct
        self.drop = empty_drop_pct
        st.setdefault("lv", 0)
        st.setdefault("ev", 0)

    def level(self, pct):
        """Number of thresholds at or below pct, lowered only past the hysteresis."""
        lv = self.st["lv"]
        while lv < len(self.th) and pct >= self.th[lv]:
            lv += 1
        while lv > 0 and pct < self.th[lv - 1] - self.hyst:
            lv -= 1
        return lv

    def update(self, pct):
        """-> (report now, emptied)."""
        st = self.st
        prev = st.get("f")
        emptied = prev is not None and prev - pct >= self.drop
        lv = self.level(pct)
        crossed_up = lv > st["lv"]
        st["lv"] = lv
        st["f"] = pct
        if emptied:
            st["ev"] += 1
        return crossed_up or emptied, emptied


def _measure(node):
    bcfg = node.cfg["calibration"]
    n = node.setting("thresholds", "pings", DEFAULT_PINGS)
    sensor = node.cfg.get("sensor", "vl53l1x")
    hal = node.hal
    # The ranger sits behind the board's load switch: powered only while measuring.
    node.energy("sensor")
    if node.sensor_power(True):
        hal.time.sleep_ms(node.board.get("sensor_boot_ms", SENSOR_BOOT_MS))
    try:
        if sensor == "vl53l1x":
            import us_vl53l1x
            tof = us_vl53l1x.VL53L1X(node.i2c(), hal.time.sleep_ms)
            tof.init()
            samples = tof.measure(n)
        else:
            import us_jsnsr04t
            # Sound speed follows the air temperature (0.18 %/K); only a calibrated sensor
            # helps: the original ESP32's raw reading is off by tens of degrees.
            us = us_jsnsr04t.JSNSR04T(hal.machine, hal.time.sleep_us, hal.time.sleep_ms,
                                      node.pin("us_trig"), node.pin("us_echo"), node.temperature_cc(True))
            samples = us.measure(n)
    finally:
        node.sensor_power(False)
        node.energy("cpu")
    return robust_distance_mm(samples, bcfg.get("min_mm", default_min_mm(sensor)), bcfg.get("max_mm", DEFAULT_MAX_MM),
                              node.setting("thresholds", "reject_mm", DEFAULT_REJECT_MM))


def run(node):
    st = node.kst
    cal = node.cfg["calibration"]
    empty_mm = cal.get("empty_mm", DEFAULT_EMPTY_MM)
    full_mm = cal.get("full_mm", DEFAULT_FULL_MM)
    logic = FillLogic(st, node.setting("thresholds", "fill_pct", list(DEFAULT_THRESHOLDS), us_proto.C_THRESHOLDS),
                      node.setting("thresholds", "hysteresis_pct", DEFAULT_HYST_PCT),
                      node.setting("thresholds", "empty_drop_pct", DEFAULT_EMPTY_DROP_PCT))
    report_s = node.setting("intervals", "report_interval_s", DEFAULT_REPORT_S, us_proto.C_REPORT_INTERVAL_S)
    node.wake_in(node.setting("intervals", "measure_s", DEFAULT_MEASURE_S))

    mm = _measure(node)
    if mm is None:
        node.flags |= us_proto.F_SENSOR_FAULT
        return
    pct = fill_pct(mm, empty_mm, full_mm)
    now_report, _ = logic.update(pct)
    if now_report or node.now_s >= st.get("rp", 0):
        r = {us_proto.Q_DISTANCE_MM: mm, us_proto.Q_FILL_PCT: pct}
        if st["ev"]:
            r[us_proto.Q_EVENTS] = st["ev"]
        else:
            r[us_proto.Q_BATTERY_MV] = node.battery_mv()
        node.send(us_proto.T_REPORT, r, (us_proto.Q_BATTERY_MV,))
        st["ev"] = 0
        st["rp"] = node.now_s + report_s
