"""us_wake's three functions at their own API: plan (which pins may be armed), arm (what the
ESP32 port is told), woken (which pins may have woken the chip). The node-level tests
(test_fw_wake, test_fw_water, test_fw_parking) reach them through whole wake cycles; these pin
each rule on its own, on the register-level fakes that mirror the port (tests/fw_fakes.py)."""

from __future__ import annotations

from typing import Any

from simulator.firmware_loader import firmware_module
from tests import fw_fakes as ff

us_wake = firmware_module("us_wake")
PULL_UP, PULL_DOWN = 2, 1


def hw(board: dict[str, Any] | None = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    w = ff.make_world("water")
    if board is not None:
        w.board = board
    return w, ff.FakeMachine(w), ff.FakeESP32(w), w.board


def plan(board: dict[str, Any], machine: Any, prio: Any, group: Any, lvl: int) -> tuple[Any, list[Any]]:
    refused: list[Any] = []

    def stuck(p: int, why: str) -> bool:
        refused.append((p, why))
        return False

    return us_wake.plan(board, machine, prio, group, lvl, stuck), refused


def test_the_wake_reasons_are_the_ports_numbers() -> None:
    assert (us_wake.EXT0_WAKE, us_wake.EXT1_WAKE, us_wake.GPIO_WAKE) == (2, 3, 7)


def test_woken_names_the_pins_armed_for_that_reason_only() -> None:
    armed = [25, [26, 27]]
    assert us_wake.woken(armed, us_wake.EXT0_WAKE) == [25]
    assert us_wake.woken([-1, [26]], us_wake.EXT0_WAKE) == []
    assert us_wake.woken(armed, us_wake.EXT1_WAKE) == [26, 27]
    assert us_wake.woken(armed, us_wake.GPIO_WAKE) == [26, 27]
    assert us_wake.woken(armed, 4) == []  # the timer
    assert us_wake.woken([], us_wake.EXT0_WAKE) == [] and us_wake.woken(None, us_wake.EXT1_WAKE) == []


def test_plan_on_an_esp32_keeps_ext0_and_the_ext1_set_apart() -> None:
    w, m, _, board = hw({"rtc_wake_pins": [25, 26, 27]})
    w.pins.update({25: 0, 26: 1, 27: 1})  # none at its wake level (25 wakes high, 26/27 low)
    p, refused = plan(board, m, (25, 1, None, False), [(26, PULL_UP, False), (27, None, False)], 0)
    assert p == (25, 1, None, [(26, PULL_UP), (27, None)], 0) and refused == []


def test_plan_refuses_a_pin_that_cannot_wake_the_chip_and_one_already_at_its_level() -> None:
    w, m, _, board = hw({"rtc_wake_pins": [25, 26]})
    w.pins.update({25: 1, 26: 0, 5: 1})
    p, refused = plan(board, m, (25, 1, None, False), [(26, None, False), (5, None, False)], 0)
    assert p == (-1, 0, None, [], 0)
    assert refused == [(25, "is already at its wake level"), (26, "is already at its wake level"),
                       (5, "cannot wake the chip from deep sleep")]


def test_an_edge_pin_is_armed_even_at_its_wake_level() -> None:
    w, m, _, board = hw({"rtc_wake_pins": [25, 26]})
    w.pins.update({25: 1, 26: 0})
    p, refused = plan(board, m, (25, 1, PULL_DOWN, True), [(26, None, True)], 0)
    assert p == (25, 1, PULL_DOWN, [(26, None)], 0) and refused == []


def test_a_board_without_rtc_wake_pins_listed_is_not_refused_for_it() -> None:
    w, m, _, board = hw({})
    w.pins[33] = 0
    p, refused = plan(board, m, (33, 1, None, False), [], 0)
    assert p[0] == 33 and refused == []


def test_plan_on_a_single_level_board_puts_the_priority_pin_into_the_set() -> None:
    """ESP32-C3 (pin_wake "gpio") and boards without ext0: one level for all pins, the
    priority pin's; pins wanting the other level are left to the timer wakes."""
    for board in ({"pin_wake": "gpio", "rtc_wake_pins": [2, 3, 4]}, {"ext0": False, "rtc_wake_pins": [2, 3, 4]}):
        w, m, _, board = hw(board)
        w.pins.update({2: 0, 3: 0, 4: 1})
        same, _ = plan(board, m, (2, 1, None, False), [(3, PULL_DOWN, False)], 1)
        assert same == (-1, 0, None, [(2, None), (3, PULL_DOWN)], 1)
        other, _ = plan(board, m, (2, 1, None, False), [(4, None, False)], 0)
        assert other == (-1, 0, None, [(2, None)], 1)


def test_arm_tells_an_esp32_its_ext0_pin_and_ext1_set_with_their_levels() -> None:
    w, m, esp32, board = hw({"rtc_wake_pins": [25, 26, 27]})
    us_wake.arm(esp32, m, board, (25, 1, PULL_DOWN, [(26, PULL_UP), (27, None)], 0))
    assert w.ext0 == (25, 1) and w.ext1 == ([26, 27], 0)
    assert w.pulls[25] == PULL_DOWN and w.pulls[26] == PULL_UP  # the pull each holds in sleep
    us_wake.arm(esp32, m, board, (-1, 0, None, [(26, None)], 1))
    assert w.ext0 is None and w.ext1 == ([26], 1)
    us_wake.arm(esp32, m, board, (-1, 0, None, [], 1))
    assert w.ext1 is None  # an empty set disarms what the last cycle armed


def test_arm_on_a_board_without_ext0_leaves_ext0_alone() -> None:
    w, m, esp32, board = hw({"ext0": False, "rtc_wake_pins": [2, 3]})
    w.ext0 = "untouched"
    us_wake.arm(esp32, m, board, (-1, 0, None, [(2, None)], 1))
    assert w.ext0 == "untouched" and w.ext1 == ([2], 1)


def test_arm_on_a_c3_uses_wake_on_gpio() -> None:
    w, m, esp32, board = hw({"pin_wake": "gpio", "rtc_wake_pins": [2, 3]})
    us_wake.arm(esp32, m, board, (-1, 0, None, [(2, PULL_DOWN), (3, None)], 1))
    assert w.gpio_wake == ([2, 3], 1) and w.ext0 is None and w.ext1 is None


def test_plan_reads_each_pin_with_the_pull_it_will_hold_in_sleep() -> None:
    """A contact to ground on an internal pull-up, woken low: open, the pull holds it high and
    it is armed. Read without its pull (a pad nothing configured since power-up floats and
    reads 0), it would look stuck at its wake level and be refused: ext0 and the set alike."""
    w, m, _, board = hw({"rtc_wake_pins": [32, 33]})
    for p in (32, 33):
        w.modes.pop(p, None), w.pulls.pop(p, None), w.pins.pop(p, None)  # untouched pads, contacts open
    p, refused = plan(board, m, (32, 0, PULL_UP, False), [(33, PULL_UP, False)], 0)
    assert p == (32, 0, PULL_UP, [(33, PULL_UP)], 0) and refused == []


def test_gpio0_is_a_pin_like_any_other_for_ext0() -> None:
    """GPIO0 is RTC_GPIO11 on the ESP32: it can be the ext0 pin (only -1 means none), and a
    wake by it names it."""
    w, m, esp32, board = hw({"rtc_wake_pins": [0, 26]})
    us_wake.arm(esp32, m, board, (0, 0, PULL_UP, [(26, None)], 1))
    assert w.ext0 == (0, 0) and w.pulls[0] == PULL_UP
    assert us_wake.woken([0, [26]], us_wake.EXT0_WAKE) == [0]
