# Water meter: reed/hall pulses counted by pin wake (the ESP32 wakes on each level change
# of the pulse input), a totalizer that never goes backwards, leak/burst/tamper alarms and
# an hourly index report. Meter is pure logic on a state dict; run() is the wake cycle.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import us_proto
import us_store

NVS_PULSES = "pulses"
HOURS = const(24)
DEFAULT_REPORT_S = const(3600)
DEFAULT_BURST_LPH = const(1500)
BURST_WINDOW_S = const(60)


class Meter:
    def __init__(self, st, ml_per_pulse, index_l=0, burst_lph=DEFAULT_BURST_LPH):
        self.st = st
        self.ml = ml_per_pulse
        self.index_l = index_l
        self.burst_lph = burst_lph
        st.setdefault("pc", 0)
        st.setdefault("nv", 0)
        st.setdefault("al", 0)
        st.setdefault("as", 0)
        st.setdefault("hn", 0)

    def restore(self, nvs_pulses):
        """After a reboot: the larger of RTC memory and flash, never less than either."""
        if nvs_pulses > self.st["pc"]:
            self.st["pc"] = nvs_pulses
        if nvs_pulses > self.st["nv"]:
            self.st["nv"] = nvs_pulses

    def volume_l(self):
        return self.index_l + self.st["pc"] * self.ml // 1000

    def _roll(self, now_s):
        st = self.st
        hour = now_s // 3600
        hb = st.get("hb")
        if hb is None:
            st["hb"] = [0] * HOURS
            st["hi"] = hour
            return
        gap = hour - st["hi"]
        if gap <= 0:
            return
        if gap > HOURS:
            gap = HOURS
        st["hb"] = hb[gap:] + [0] * gap
        st["hi"] = hour
        st["hn"] = min(st["hn"] + gap, HOURS)

    def tick(self, now_s):
        self._roll(now_s)
        self._check_leak()

    def pulse(self, now_s, n=1):
        st = self.st
        self._roll(now_s)
        st["pc"] += n
        st["hb"][-1] += n
        if now_s - st.get("wt", -BURST_WINDOW_S) >= BURST_WINDOW_S:
            st["wt"] = now_s
            st["wp"] = 0
        st["wp"] += n
        # pulses in the current minute, as litres per hour
        if st["wp"] * self.ml * 3600 // (1000 * BURST_WINDOW_S) >= self.burst_lph:
            st["al"] |= us_proto.A_BURST
        self._check_leak()

    def _check_leak(self):
        st = self.st
        # Leak: 24 full hours tracked and none of them without flow.
        if st["hn"] >= HOURS - 1 and all(h > 0 for h in st["hb"][:-1]) and st["hb"][-1] > 0:
            st["al"] |= us_proto.A_LEAK
        elif 0 in st["hb"][:-1]:
            st["al"] &= ~us_proto.A_LEAK

    def last_hour_lph(self):
        hb = self.st["hb"]
        return hb[-2] * self.ml // 1000 if len(hb) > 1 else 0

    def end_of_hour(self):
        if self.last_hour_lph() < self.burst_lph:
            self.st["al"] &= ~us_proto.A_BURST

    def new_alarms(self):
        """Alarm bits raised since the last alarm frame."""
        return self.st["al"] & ~self.st["as"]

    def need_flash(self):
        """Pulses counted that flash does not hold yet. Written in the wake that counted
        them (before anything goes on air), so a power loss costs at most the pulse in
        flight and a reported index is never above flash."""
        return self.st["pc"] > self.st["nv"]

    def flashed(self):
        self.st["nv"] = self.st["pc"]


def _tamper_pull(m, name):
    """Board "tamper_pull": "down" (default: a switch to 3V3 that closes when the lid opens
    draws nothing while closed), "up" (a switch to GND that opens with the lid: a cut wire
    reads as opened, but the internal ~45 kOhm pull-up draws ~80 uA while the lid is shut,
    so pair it with an external 1-10 MOhm one and "none"), or "none" (external resistor)."""
    if name == "up":
        return m.Pin.PULL_UP
    if name == "none":
        return None
    return m.Pin.PULL_DOWN


def run(node):
    hal = node.hal
    m = hal.machine
    st = node.kst
    cal = node.cfg["calibration"]
    meter = Meter(st, cal.get("ml_per_pulse", 1000), cal.get("index_l", 0),
                  node.setting("thresholds", "burst_lph", DEFAULT_BURST_LPH, us_proto.C_BURST_LPH))
    if node.cold:
        meter.restore(us_store.nvs_get_int(node.nvs, NVS_PULSES, 0))
    active = node.setting("calibration", "pulse_active_level", 0)
    pin_no = node.pin("pulse")
    pull = m.Pin.PULL_UP if active == 0 else m.Pin.PULL_DOWN
    level = m.Pin(pin_no, m.Pin.IN, pull).value()
    # Without a level from RTC memory (first boot, power loss) the input's level now is the
    # starting point: a reed found closed is the pulse that NVS counted before the power
    # went (or one in flight, lost), never a new one.
    prev = st.get("lv", level)

    # Tamper (opt-in: calibration.tamper): high = opened. Armed on the opposite of its
    # level, so opening raises the alarm and closing clears it, each with one wake.
    tamper_pin = node.board.get("pins", {}).get("tamper")
    moved = False
    if tamper_pin is not None and cal.get("tamper", False):
        tpull = _tamper_pull(m, node.board.get("tamper_pull", "down"))
        tp = m.Pin(tamper_pin, m.Pin.IN) if tpull is None else m.Pin(tamper_pin, m.Pin.IN, tpull)
        opened = tp.value()
        moved = opened != st.get("tl", 0)
        st["tl"] = opened
        if opened:
            st["al"] |= us_proto.A_TAMPER
        else:
            st["al"] &= ~us_proto.A_TAMPER
        node.wake_on_pins([tamper_pin], 1 - opened, tpull, True)
    else:
        st["al"] &= ~us_proto.A_TAMPER
        st.pop("tl", None)

    # A pin wake with the input back at its old level is a pulse shorter than our boot, but
    # only if the pulse input woke us: ext0 is that pin alone; an ext1/GPIO set may hold
    # the tamper pin too, and a tamper that moved explains the wake instead.
    woke = node.wake_pins()
    woke_by_pulse = pin_no in woke and (len(woke) == 1 or not moved)
    if level != prev:
        if level == active:
            meter.pulse(node.now_s)
    elif woke_by_pulse and prev != active:
        meter.pulse(node.now_s)
    else:
        meter.tick(node.now_s)
    st["lv"] = level

    report = node.now_s >= st.get("rp", 0)
    if report:
        meter.end_of_hour()
    fresh = meter.new_alarms()
    cleared = st["as"] & ~st["al"] & us_proto.A_TAMPER  # a closed lid is news too
    alarm = fresh or cleared
    # Every pulse wake writes the count (one 32-byte NVS entry, docs/FIRMWARE.md "Persistence
    # and flash wear": ~1 % of a pulse's energy, ~1 % of the flash's erase budget in 15 years).
    if meter.need_flash():
        us_store.nvs_set_int(node.nvs, NVS_PULSES, st["pc"])
        meter.flashed()
    if alarm:
        node.send(us_proto.T_ALARM, {us_proto.Q_VOLUME_L: meter.volume_l(), us_proto.Q_ALARMS: st["al"]})
    st["as"] = st["al"]
    if report:
        node.send(us_proto.T_REPORT, {us_proto.Q_VOLUME_L: meter.volume_l(), us_proto.Q_ALARMS: st["al"],
                                      us_proto.Q_FLOW_LPH: meter.last_hour_lph()})
        rs = node.setting("intervals", "report_interval_s", DEFAULT_REPORT_S, us_proto.C_REPORT_INTERVAL_S)
        st["rp"] = (node.now_s // rs + 1) * rs  # on the hour: buckets and reports line up
    node.wake_at(st["rp"])
    # Wake on the opposite level: the next edge of the pulse input. It has priority over
    # the tamper pin where one level serves all pins (ESP32-C3): the tamper pin is then
    # read on every wake, pulse or timer.
    node.wake_on_pin(pin_no, 1 - level, pull, True)
