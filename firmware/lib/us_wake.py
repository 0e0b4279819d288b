# Deep-sleep wake pins (docs/FIRMWARE.md, "Wake pin guard"): from the pins a node kind asked
# to be woken by (us_node.Node.wake_on_pin/wake_on_pins) to what the ESP32 port arms, and from
# the port's wake reason back to the pins that may have woken the chip.
#
# plan() settles the request before any frame is built, so a pin it refuses goes out in this
# cycle's status frame; arm() applies the plan at the end of the cycle, once the radio is off.
# The ESP32 arms one ext0 pin (its own level) and an ext1 set (one level for all); the C3 has
# neither in the port, only esp32.wake_on_gpio (one level for every pin), so there the
# priority pin joins the set and sets its level. A pin that is not in the board's
# rtc_wake_pins, or that already reads its wake level (the chip would wake at once, forever),
# is not armed: plan() calls stuck(pin, why) for it and the caller polls on a timer instead.
# An "edge" pin (the kind read it at the other level this cycle) is armed even at its wake
# level: it changed since, waking at once is right, and the next cycle arms the other level.
# A module of functions, no state: the plan is a tuple the caller keeps for one cycle.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

# esp_sleep_get_wakeup_cause() values, which machine.wake_reason() returns as they are; the
# port names only EXT0/EXT1 (2/3), not GPIO (7, the ESP32-C3's wake_on_gpio).
EXT0_WAKE = const(2)
EXT1_WAKE = const(3)
GPIO_WAKE = const(7)


def _pin_in(machine, p, pull):
    return machine.Pin(p, machine.Pin.IN) if pull is None else machine.Pin(p, machine.Pin.IN, pull)


def _usable(board, machine, p, level, pull, edge, stuck):
    wake_capable = board.get("rtc_wake_pins")
    if wake_capable is not None and p not in wake_capable:
        return stuck(p, "cannot wake the chip from deep sleep")
    if _pin_in(machine, p, pull).value() == (1 if level else 0) and not edge:
        return stuck(p, "is already at its wake level")
    return True


def plan(board, machine, prio, group, lvl, stuck):
    """prio: (pin, level, pull, edge) or None; group: [(pin, pull, edge)] sharing level lvl;
    stuck(pin, why) -> False for a pin that must not be armed.
    -> (ext0 pin or -1, its level, its pull, [(pin, pull)] of ext1/GPIO wake, their level)."""
    if prio is not None and (board.get("pin_wake") == "gpio" or not board.get("ext0", True)):
        # One level for all pins: the priority pin's (water pulses, the magnetometer).
        # Pins that want the other level are read on the timer wakes instead.
        group = [(prio[0], prio[2], prio[3])] + (group if lvl == prio[1] else [])
        lvl = prio[1]
        prio = None
    e0 = -1
    e0_level = 0
    e0_pull = None
    if prio is not None and _usable(board, machine, prio[0], prio[1], prio[2], prio[3], stuck):
        e0, e0_level, e0_pull = prio[0], prio[1], prio[2]
    pins = [(g[0], g[1]) for g in group if _usable(board, machine, g[0], lvl, g[1], g[2], stuck)]
    return (e0, e0_level, e0_pull, pins, lvl)


def woken(armed_before, wake):
    """Pins that may have woken this cycle: the ext0 pin alone, or the ext1/GPIO set armed
    last cycle (armed_before: [ext0 pin or -1, [pins]]; the port does not say which of a
    set, the kind tells them apart)."""
    if not armed_before:
        return []
    if wake == EXT0_WAKE:
        return [armed_before[0]] if armed_before[0] >= 0 else []
    if wake == EXT1_WAKE or wake == GPIO_WAKE:
        return armed_before[1]
    return []


def arm(esp32, machine, board, wake_plan):
    e0, e0_level, e0_pull, pins, lvl = wake_plan
    group = [_pin_in(machine, p, pull) for p, pull in pins]  # with the pull it holds in sleep
    level = esp32.WAKEUP_ANY_HIGH if lvl else esp32.WAKEUP_ALL_LOW
    if board.get("pin_wake") == "gpio":
        # ESP32-C3: no ext0/ext1 in the port, esp32.wake_on_gpio instead (one level for
        # all pins; only the board's rtc_wake_pins can wake it from deep sleep).
        esp32.wake_on_gpio(group, level)
        return
    if board.get("ext0", True):
        esp32.wake_on_ext0(_pin_in(machine, e0, e0_pull) if e0 >= 0 else None, e0_level)
    esp32.wake_on_ext1(group, level)  # an empty list disarms (None would keep the old set)
