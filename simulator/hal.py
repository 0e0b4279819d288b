"""The HAL object for one simulated node (docs/HAL.md), mirroring micropython-esp32-stubs.

``hal.machine``, ``hal.esp32``, ``hal.bluetooth`` and ``hal.time`` are small objects bound
to one ``SimNode``; the firmware cannot tell them from the modules on a board, down to the
exceptions a simulated part raises. Each module's object lives in its own module:
simulator/hal_machine.py (with hal_pins.py and hal_buses.py), hal_esp32.py, hal_ble.py,
hal_time.py; this one assembles them and adds the board's flash file system (``hal.open``:
a file written is stored in the node's ``files`` when closed, one flash write) and
``hal.energy``, the firmware's declaration of its power state.
"""

from __future__ import annotations

import errno
import io
from typing import TYPE_CHECKING

from simulator.hal_ble import SimBluetooth
from simulator.hal_esp32 import SimEsp32
from simulator.hal_machine import SimMachine
from simulator.hal_time import SimTime

if TYPE_CHECKING:
    from simulator.hal_contract import HAL
    from simulator.node import SimNode


class _WriteFile(io.StringIO):
    def __init__(self, node: SimNode, path: str) -> None:
        super().__init__()
        self._node = node
        self._path = path

    def close(self) -> None:
        if not self.closed:
            self._node.files[self._path] = self.getvalue().encode()
            self._node.flash_writes += 1
        super().close()


class _WriteBinFile(io.BytesIO):
    def __init__(self, node: SimNode, path: str) -> None:
        super().__init__()
        self._node = node
        self._path = path

    def close(self) -> None:
        if not self.closed:
            self._node.files[self._path] = self.getvalue()
            self._node.flash_writes += 1
        super().close()


class SimHAL:
    """The ``hal`` object of docs/HAL.md for one node."""

    def __init__(self, node: SimNode) -> None:
        self._n = node
        self.machine = SimMachine(node)
        self.esp32 = SimEsp32(node)
        self.bluetooth = SimBluetooth(node)
        self.time = SimTime(node)

    def open(self, path: str, mode: str = "r") -> io.IOBase:
        path = path.lstrip("/")
        files = self._n.files
        if "r" in mode:
            if path not in files:
                raise OSError(errno.ENOENT, path)
            data = files[path]
            return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode())
        return _WriteBinFile(self._n, path) if "b" in mode else _WriteFile(self._n, path)

    def energy(self, state: str) -> None:
        self._n.declare(state)


def _contract(node: SimNode) -> HAL:
    """mypy holds SimHAL to the contract of docs/HAL.md (simulator/hal_contract.py) here."""
    return SimHAL(node)
