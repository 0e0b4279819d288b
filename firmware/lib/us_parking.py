# Parking space: magnetometer baseline + hysteresis state machine. Detector is pure logic
# (state in a dict that lives in RTC memory); run() is the wake cycle around it.
#
# Confirmation spans wakes: a first reading past a threshold schedules a short timer wake
# and the state changes only after `confirm` consecutive readings agree, so a car driving
# over the sensor is not a parking event.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import us_lis3mdl
import us_proto
import us_store

DEFAULT_ON_UT = const(12)
DEFAULT_CONFIRM = const(2)
DEFAULT_CONFIRM_GAP_S = const(8)
DEFAULT_HEARTBEAT_S = const(3600)
DEFAULT_OCC_POLL_S = const(600)
DEFAULT_FREE_POLL_S = const(600)  # 0 disables the free-state check
DRIFT_SHIFT = const(5)  # baseline follows 1/32 of the error per free reading
INSTALL_SAMPLES = const(8)
MAG_BOOT_MS = const(5)  # LIS3MDL after power-up: boot (memory content load) before I2C setup
BASE_SAVE_MIN_S = const(3600)  # at most one baseline write an hour, however noisy the field
# RTC state "mi": [INT_CFG, INT_THS] the part holds, what the last cycle programmed.
_ST_INT = "mi"
# NVS "mag_base": [x, y, z] nT, or [x, y, z, cx, cy, cz] when re-learned from config.json's
# calibration.baseline_nt c (so a changed config baseline still wins after a reboot).
_NVS_BASE = "mag_base"


def _dev2(a, b):
    return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2


class Detector:
    """Occupied/free with hysteresis (on_nt > off_nt) and `confirm` agreeing samples."""

    def __init__(self, st, on_nt, off_nt, confirm):
        self.st = st
        st.setdefault("o", 0)
        st.setdefault("s", 0)
        st.setdefault("ev", 0)
        self.on2 = on_nt * on_nt
        self.off2 = off_nt * off_nt
        self.confirm = confirm if confirm > 0 else 1

    @property
    def occupied(self):
        return bool(self.st["o"])

    def calibrate(self, samples):
        n = len(samples)
        self.st["b"] = [sum(s[i] for s in samples) // n for i in range(3)]
        self.st["o"] = 0
        self.st["s"] = 0

    def update(self, sample):
        """-> True when the state changed with this sample."""
        st = self.st
        base = st["b"]
        st["l"] = list(sample)
        d2 = _dev2(sample, base)
        if st["o"]:
            toward = d2 < self.off2
        else:
            toward = d2 > self.on2
            if d2 < self.off2:
                # Quiet and free: follow temperature and drift slowly.
                st["b"] = [base[i] + ((sample[i] - base[i]) >> DRIFT_SHIFT) for i in range(3)]
        if not toward:
            st["s"] = 0
            return False
        st["s"] += 1
        if st["s"] < self.confirm:
            return False
        st["o"] = 0 if st["o"] else 1
        st["s"] = 0
        st["ev"] += 1
        return True

    def pending(self):
        return self.st["s"] > 0

    def interrupt_plan(self, margin_nt):
        """-> (axes mask, threshold nT) for the LIS3MDL |axis| > threshold interrupt, or None.

        Free: any axis rising past its baseline magnitude + on-threshold. Occupied: the axis
        whose magnitude the car lowered most, so its return toward baseline wakes us.
        """
        base = self.st["b"]
        if not self.st["o"]:
            return 7, max(abs(v) for v in base) + margin_nt
        last = self.st.get("l") or base
        best = -1
        drop = 0
        for i in range(3):
            d = abs(base[i]) - abs(last[i])
            if d > drop:
                best, drop = i, d
        if best < 0 or drop < 2 * margin_nt // 3:
            return None
        return 4 >> best, (abs(base[best]) + abs(last[best])) // 2


def sample_nt(mag, hal, n=4):
    """Mean of n samples in nT (the sum converted once: no per-sample rounding)."""
    sx = sy = sz = 0
    for _ in range(n):
        waited = 0
        s = mag.read_raw_if_ready()
        while s is None:
            if waited > 200:
                raise OSError(116)
            hal.time.sleep_ms(2)
            waited += 2
            s = mag.read_raw_if_ready()
        sx += s[0]
        sy += s[1]
        sz += s[2]
    lsb_to_nt = us_lis3mdl.lsb_to_nt
    return [lsb_to_nt(sx) // n, lsb_to_nt(sy) // n, lsb_to_nt(sz) // n]


def _install_samples(mag, hal):
    return [sample_nt(mag, hal, 2) for _ in range(INSTALL_SAMPLES)]


def calibrate_empty(mag, hal, nvs, config_base):
    """The installer's empty-space step (``urbansense node doctor --calibrate-empty``): the
    baseline measured as the install boot measures it, stored where _load_base looks: alone,
    or tagged with config.json's calibration.baseline_nt (config_base) so that it wins over
    that config baseline. The node applies it at its next cold boot (RTC state cleared).
    -> the baseline [x, y, z] nT."""
    det = Detector({}, 1, 0, 1)
    det.calibrate(_install_samples(mag, hal))
    rec = list(det.st["b"])
    if config_base is not None:
        rec.extend(config_base)
    us_store.nvs_set_obj(nvs, _NVS_BASE, rec)
    return rec[:3]


def check_config(cfg):
    import us_config

    th = cfg["thresholds"]
    on = th.get("mag_threshold_ut", DEFAULT_ON_UT)
    us_config.need(th.get("mag_release_ut", 0) < on,
                   "thresholds.mag_release_ut must be below thresholds.mag_threshold_ut (" + str(on) + ")")


def _load_base(node):
    rec = us_store.nvs_get_obj(node.nvs, _NVS_BASE)
    cal = node.cfg["calibration"].get("baseline_nt")
    ok = isinstance(rec, list) and (len(rec) == 3 or len(rec) == 6)
    if cal is not None:
        if ok and len(rec) == 6 and rec[3:] == list(cal):
            return rec[:3]  # re-learned since this config baseline was installed
        return list(cal)
    return rec[:3] if ok else None


def _save_base(node, st, off_nt):
    """Persist the re-learned baseline once it has moved more than half the release
    threshold since the last write (else a battery swap reverts to the install baseline,
    which the drift may have left a car's worth behind), at most hourly."""
    b = st["b"]
    if _dev2(b, st.get("bs") or b) * 4 <= off_nt * off_nt or node.now_s < st.get("bt", 0):
        return
    rec = list(b)
    cal = node.cfg["calibration"].get("baseline_nt")
    if cal is not None:
        rec.extend(cal)
    us_store.nvs_set_obj(node.nvs, _NVS_BASE, rec)
    st["bs"] = list(b)
    st["bt"] = node.now_s + BASE_SAVE_MIN_S


def run(node):
    hal = node.hal
    st = node.kst
    on_nt = node.setting("thresholds", "mag_threshold_ut", DEFAULT_ON_UT, us_proto.C_MAG_THRESHOLD_UT) * 1000
    off_nt = node.setting("thresholds", "mag_release_ut", on_nt // 2000, None) * 1000
    if off_nt >= on_nt:  # a downlink lowered the threshold under the configured release
        off_nt = on_nt // 2
    det = Detector(st, on_nt, off_nt, node.setting("thresholds", "confirm_samples", DEFAULT_CONFIRM))
    hb_s = node.setting("intervals", "heartbeat_s", DEFAULT_HEARTBEAT_S, us_proto.C_HEARTBEAT_S)

    node.energy("sensor")
    # The magnetometer stays powered (its interrupt wakes us): switch it on, and keep it on.
    powered_up = node.sensor_power(True)
    if powered_up:
        hal.time.sleep_ms(MAG_BOOT_MS)
    mag = us_lis3mdl.LIS3MDL(node.i2c(), node.board.get("lis3mdl_addr", us_lis3mdl.ADDR_SA1_LOW))
    m = hal.machine
    # The interrupt registers hold what the last cycle wrote when the part stayed powered and
    # that cycle ran to its deep sleep (it saved the state after programming them).
    held = st.pop(_ST_INT, None)
    if node.cold or powered_up:
        held = None
        mag.init(us_lis3mdl.ODR_80_HZ)
    else:
        if m.reset_cause() != m.DEEPSLEEP_RESET:
            held = None
        # The latched event that woke us is cleared with the INT_SRC read below.
        mag.set_odr(us_lis3mdl.ODR_80_HZ)
    if "b" not in st:
        base = _load_base(node)
        if base is not None:
            st["b"] = base
        else:
            # Install: the space is empty when the installer powers the node up.
            det.calibrate(_install_samples(mag, hal))
            us_store.nvs_set_obj(node.nvs, _NVS_BASE, st["b"])
            node.flags |= us_proto.F_CALIBRATING
        st["bs"] = list(st["b"])
        sample = None
    else:
        sample = sample_nt(mag, hal)
    changed = det.update(sample) if sample is not None else False
    _save_base(node, st, off_nt)

    plan = None if det.pending() else det.interrupt_plan(on_nt)
    if plan is None:
        cfg, ths = us_lis3mdl.INT_OFF, None
    else:
        cfg, ths = us_lis3mdl.interrupt_setting(plan[0], plan[1])
    st[_ST_INT] = mag.program_interrupt(cfg, ths, held)
    mag.set_odr(us_lis3mdl.ODR_1_25_HZ)  # slow continuous conversion while we sleep
    node.energy("cpu")

    if changed:
        node.send(us_proto.T_REPORT, {us_proto.Q_OCCUPIED: det.occupied, us_proto.Q_EVENTS: st["ev"]})
        st["ev"] = 0
        st["hb"] = node.now_s + hb_s
    elif node.now_s >= st.get("hb", 0):
        node.send(us_proto.T_REPORT, {us_proto.Q_OCCUPIED: det.occupied, us_proto.Q_BATTERY_MV: node.battery_mv(),
                                      us_proto.Q_EVENTS: st["ev"]})
        st["ev"] = 0
        st["hb"] = node.now_s + hb_s
    node.wake_at(st["hb"])

    if det.pending():
        node.wake_in(node.setting("intervals", "confirm_gap_s", DEFAULT_CONFIRM_GAP_S))
    elif plan is None:
        node.wake_in(node.setting("intervals", "occupied_poll_s", DEFAULT_OCC_POLL_S))
    else:
        node.wake_on_pin(node.pin("mag_int"), 1)
        if not det.occupied:
            # The |axis| > threshold interrupt sees a car that strengthens the field; one that
            # weakens it (|B| falls on every axis) crosses no single threshold the part can
            # hold, so a free space is also checked on a slow timer (docs/FIRMWARE.md).
            free_poll = node.setting("intervals", "free_poll_s", DEFAULT_FREE_POLL_S)
            if free_poll:
                node.wake_in(free_poll)
