"""MicroPython ``bluetooth`` for one simulated node: a BLE advertiser.

Contract: ``BLE()`` returns the node's one radio; ``active(True)`` powers it
(``Advertiser.power_on``), ``active(False)`` stops advertising. ``gap_advertise(interval_us,
adv_data)`` on an inactive radio raises ``OSError(EPERM)``, advertising data over 31 bytes
``ValueError``; ``gap_advertise(None)`` stops. Adverts go to the node's advertiser
(simulator/advertising.py), which puts them on the air (simulator/air.py). No connections, scanning or GATT: the firmware only advertises.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Final

from simulator.advertising import address_bytes

if TYPE_CHECKING:
    from simulator.node import SimNode


class SimBLE:
    __slots__ = ("_active", "_n")

    def __init__(self, node: SimNode) -> None:
        self._n = node
        self._active = False

    def active(self, active: bool | None = None) -> bool | None:
        if active is None:
            return self._active
        if active and not self._active:
            self._n.radio.power_on()
        if not active:
            self._n.radio.stop()
        self._active = bool(active)
        return None

    def config(self, *args: Any, **kwargs: Any) -> Any:
        if args and args[0] == "mac":
            return (0, address_bytes(self._n.node_id))
        return None

    def irq(self, handler: Any) -> None:
        return None

    def gap_advertise(self, interval_us: int | None, adv_data: Any = None, *, resp_data: Any = None,
                      connectable: bool = True) -> None:
        if not self._active:
            raise OSError(errno.EPERM, "EPERM")
        if interval_us is None:
            self._n.radio.stop()
            return
        if adv_data is not None and len(adv_data) > 31:
            raise ValueError("advertising data too long")
        self._n.radio.start(int(interval_us), bytes(adv_data or b""))


class SimBluetooth:
    FLAG_READ: Final = 0x0002
    FLAG_WRITE: Final = 0x0008
    FLAG_NOTIFY: Final = 0x0010

    def __init__(self, node: SimNode) -> None:
        self._ble = SimBLE(node)

    def BLE(self) -> SimBLE:
        return self._ble
