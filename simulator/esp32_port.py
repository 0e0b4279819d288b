"""The MicroPython ESP32 port's reset causes and wake reasons: the one home of these numbers.

Reset causes are MicroPython's (ports/esp32/modmachine.c, ``MP_PWRON_RESET = 1`` ..
``MP_SOFT_RESET``); wake reasons are ESP-IDF's ``esp_sleep_wakeup_cause_t``
(components/esp_hw_support/include/esp_sleep.h: EXT0 2, EXT1 3, TIMER 4, TOUCHPAD 5, ULP 6,
GPIO 7), which ``machine.wake_reason()`` returns as they are. micropython-esp32-stubs'
machine.pyi names the same constants.

Plain integers in the MicroPython subset: the simulated HAL (simulator/hal_machine.py), the node model
(simulator/node.py) and the tests' fake HAL (tests/fw_fakes.py, which also runs on the
MicroPython VM) import them from here; the firmware's own ``us_wake.EXT0_WAKE`` (EXT1, GPIO) is
pinned to them by tests/test_hal_contract.py.
"""

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

EXT0_WAKE = 2
PIN_WAKE = 2  # the port's alias of EXT0_WAKE
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6
GPIO_WAKE = 7  # the C3's esp32.wake_on_gpio; machine has no name for it
