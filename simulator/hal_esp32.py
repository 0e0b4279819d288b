"""MicroPython ``esp32`` for one simulated node: NVS, deep-sleep wake sources, chip extras.

Contract: NVS writes are pending until ``commit()``, which makes them durable (they survive a
power loss, unlike RTC memory), counts one flash write per key and costs 2 ms; a missing key
raises ``OSError(ENOENT)``, a key of the other type or a blob longer than the buffer
``OSError(EINVAL)``, an i32 out of range ``OverflowError``, as the port does. The wake
sources exist only where the chip has them (the ESP32: ``wake_on_ext0``/``wake_on_ext1``; the
C3: ``wake_on_gpio``, ``ValueError`` for a pin that cannot wake it); they arm the node's ext0 or
ext1 state, which the simulator reads to schedule the wake. ``mcu_temperature`` exists on the
chips that have it. The ULP is present but runs nothing (``OSError(EOPNOTSUPP)``).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Final

from simulator.hal_pins import pin_id

if TYPE_CHECKING:
    from simulator.node import SimNode


class SimNVS:
    __slots__ = ("_n", "_ns")

    def __init__(self, node: SimNode, namespace: str) -> None:
        self._n = node
        self._ns = namespace

    def _get(self, key: str) -> Any:
        n = self._n
        k = (self._ns, key)
        v = n.nvs_pending[k] if k in n.nvs_pending else n.nvs.get(k)
        if v is None:
            raise OSError(errno.ENOENT, "ESP_ERR_NVS_NOT_FOUND")
        return v

    def get_i32(self, key: str, /) -> int:
        v = self._get(key)
        if not isinstance(v, int):
            raise OSError(errno.EINVAL, "ESP_ERR_NVS_TYPE_MISMATCH")
        return v

    def set_i32(self, key: str, value: int, /) -> None:
        if not -(1 << 31) <= value < (1 << 31):
            raise OverflowError("overflow converting long int to machine word")
        self._n.nvs_pending[(self._ns, key)] = int(value)

    def get_blob(self, key: str, buffer: Any, /) -> int:
        v = self._get(key)
        if not isinstance(v, bytes):
            raise OSError(errno.EINVAL, "ESP_ERR_NVS_TYPE_MISMATCH")
        if len(v) > len(buffer):
            raise OSError(errno.EINVAL, "ESP_ERR_NVS_INVALID_LENGTH")
        buffer[: len(v)] = v
        return len(v)

    def set_blob(self, key: str, value: Any, /) -> None:
        self._n.nvs_pending[(self._ns, key)] = bytes(value)

    def erase_key(self, key: str, /) -> None:
        self._get(key)
        self._n.nvs_pending[(self._ns, key)] = None

    def commit(self) -> None:
        n = self._n
        for k, v in n.nvs_pending.items():
            if v is None:
                n.nvs.pop(k, None)
            else:
                n.nvs[k] = v
            n.flash_writes += 1
        n.nvs_pending.clear()
        n.advance(2e-3)  # a flash page write (ESP-IDF NVS: ms class)


class SimULP:
    """Present so code that probes for it imports; the simulator runs no ULP programs."""

    RESERVE_MEM: Final = 2040

    def __init__(self) -> None:
        return None

    def set_wakeup_period(self, period_index: int, period_us: int, /) -> None:
        return None

    def load_binary(self, load_addr: int, program_binary: Any, /) -> None:
        raise OSError(errno.EOPNOTSUPP, "simulator: no ULP")

    def run(self, entry_point: int, /) -> None:
        raise OSError(errno.EOPNOTSUPP, "simulator: no ULP")


class SimEsp32:
    WAKEUP_ALL_LOW: Final = False
    WAKEUP_ANY_HIGH: Final = True
    HEAP_DATA: Final = 4
    HEAP_EXEC: Final = 1

    def __init__(self, node: SimNode) -> None:
        self._n = node
        self.ULP = SimULP
        if node.chip != "esp32":
            self.mcu_temperature = self._mcu_temperature
        # The port compiles each wake source only where the SoC has it (modesp32.c:
        # SOC_PM_SUPPORT_EXT0/EXT1_WAKEUP, SOC_GPIO_SUPPORT_DEEPSLEEP_WAKEUP): the C3 has
        # wake_on_gpio and no ext0/ext1, the ESP32 the reverse.
        if node.chip == "esp32-c3":
            self.wake_on_gpio = self._wake_on_gpio
        else:
            self.wake_on_ext0 = self._wake_on_ext0
            self.wake_on_ext1 = self._wake_on_ext1

    def NVS(self, namespace: str) -> SimNVS:
        return SimNVS(self._n, namespace)

    def _wake_on_ext0(self, pin: Any, level: bool | int, /) -> None:
        self._n.ext0 = None if pin is None else (pin_id(pin), int(bool(level)))

    def _wake_on_ext1(self, pins: Any, level: bool | int, /) -> None:
        self._n.ext1 = None if not pins else ([pin_id(p) for p in pins], int(bool(level)))

    def _wake_on_gpio(self, pins: Any, level: bool | int, /) -> None:
        ids = [pin_id(p) for p in pins] if pins else []
        bad = [i for i in ids if i not in self._n.rtc_wake_pins]
        if bad:  # the port: "invalid pin" for a pin that cannot wake the chip from deep sleep
            raise ValueError(f"invalid pin {bad[0]}")
        self._n.ext1 = (ids, int(bool(level))) if ids else None  # same any-high/all-low rule

    def wake_on_ulp(self, wake: bool, /) -> None:
        return None

    def wake_on_touch(self, wake: bool, /) -> None:
        return None

    def _mcu_temperature(self) -> int:
        return round(self._n.temperature_c(self._n.t) + 8.0)  # die runs warmer than air

    def raw_temperature(self) -> int:
        return round((self._n.temperature_c(self._n.t) + 20.0) * 9 / 5 + 32)

    def idf_heap_info(self, capabilities: int) -> list[tuple[int, int, int, int]]:
        return [(112_000, 60_000, 50_000, 40_000)]
