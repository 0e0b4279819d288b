"""``machine.I2C``/``SoftI2C`` and ``machine.UART`` for one simulated node: the buses.

Contract: an I2C transaction is dispatched at register level to the node's parts
(``SimNode.i2c_devices``, simulator/devices.py) and costs its bit times at the bus frequency
(9 bit times a byte for START, address, register address, data and STOP, plus 20 us); an
address nobody answers, or any address while the sensor rail is off, raises
``OSError(ENODEV)`` as the port's NACK does, after the time of the failed address phase. A
UART exists only on a node wired to a serial link (otherwise ``ValueError``); a write costs 10
bit times a byte (8N1) charged as ``uart`` and hands the bytes to the link, reads take what
the link has delivered (``None`` when nothing).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.node import SimNode


class SimI2C:
    """machine.I2C / SoftI2C: register transactions dispatched to the node's devices."""

    __slots__ = ("_n", "freq")

    def __init__(self, node: SimNode, id: int = -1, *, scl: Any = None, sda: Any = None,
                 freq: int = 400_000, timeout: int = 50_000) -> None:
        self._n = node
        self.freq = freq

    def init(self, *, scl: Any = None, sda: Any = None, freq: int = 400_000) -> None:
        self.freq = freq

    def _dev(self, addr: int) -> Any:
        dev = self._n.i2c_devices.get(addr)
        if dev is None or not self._n.i2c_powered:
            self._n.advance(30 * 9 / self.freq)
            raise OSError(errno.ENODEV, "ENODEV")
        return dev

    def _cost(self, nbytes: int, addrsize: int) -> None:
        # START + address + register address + data + STOP, 9 bit times each byte.
        self._n.advance((3 + addrsize // 8 + nbytes) * 9 / self.freq + 20e-6)

    def scan(self) -> list[int]:
        return sorted(self._n.i2c_devices) if self._n.i2c_powered else []

    def readfrom_mem(self, addr: int, memaddr: int, nbytes: int, /, *, addrsize: int = 8) -> bytes:
        n = self._n
        dev = n.i2c_devices.get(addr)
        if dev is None or not n.i2c_powered:
            return self._dev(addr)  # type: ignore[no-any-return]  # raises the NACK
        n.advance((3 + (addrsize >> 3) + nbytes) * 9 / self.freq + 20e-6)
        data: bytes = dev.read(memaddr, nbytes)
        return data

    def readfrom_mem_into(self, addr: int, memaddr: int, buf: Any, /, *, addrsize: int = 8) -> None:
        n = self._n
        dev = n.i2c_devices.get(addr)
        if dev is None or not n.i2c_powered:
            dev = self._dev(addr)  # raises the NACK
        nbytes = len(buf)
        n.advance((3 + (addrsize >> 3) + nbytes) * 9 / self.freq + 20e-6)
        data = dev.read(memaddr, nbytes)
        buf[: len(data)] = data

    def writeto_mem(self, addr: int, memaddr: int, buf: Any, /, *, addrsize: int = 8) -> None:
        n = self._n
        dev = n.i2c_devices.get(addr)
        if dev is None or not n.i2c_powered:
            dev = self._dev(addr)  # raises the NACK
        n.advance((3 + addrsize // 8 + len(buf)) * 9 / self.freq + 20e-6)
        dev.write(memaddr, bytes(buf))

    def readfrom(self, addr: int, nbytes: int, stop: bool = True, /) -> bytes:
        return self.readfrom_mem(addr, 0, nbytes)

    def writeto(self, addr: int, buf: Any, stop: bool = True, /) -> int:
        b = bytes(buf)
        if b:
            self.writeto_mem(addr, b[0], b[1:])
        else:
            self._dev(addr)
        return 1


class SimUART:
    __slots__ = ("_n", "baudrate", "id")

    def __init__(self, node: SimNode, id: int, baudrate: int = 115200, **kwargs: Any) -> None:
        if node.serial is None:
            raise ValueError("UART not wired on this node")
        self._n = node
        self.id = id
        self.baudrate = baudrate

    def init(self, baudrate: int = 115200, **kwargs: Any) -> None:
        self.baudrate = baudrate

    def write(self, buf: Any) -> int:
        data = bytes(buf)
        n = self._n
        n.advance(len(data) * 10 / self.baudrate, "uart")  # 8N1: 10 bit times a byte
        n.uart_busy = True
        assert n.serial is not None
        n.serial.node_write(n, data)
        return len(data)

    def any(self) -> int:
        assert self._n.serial is not None
        return int(self._n.serial.rx_available(self._n))

    def read(self, nbytes: int | None = None) -> bytes | None:
        assert self._n.serial is not None
        data = self._n.serial.rx_read(self._n, nbytes)
        return data or None

    def readinto(self, buf: Any, nbytes: int | None = None) -> int | None:
        data = self.read(len(buf) if nbytes is None else nbytes)
        if not data:
            return None
        buf[: len(data)] = data
        return len(data)

    def readline(self) -> bytes | None:
        return self.read()

    def deinit(self) -> None:
        self._n.uart_busy = False


class UARTFactory:
    __slots__ = ("_n",)

    def __init__(self, node: SimNode) -> None:
        self._n = node

    def __call__(self, id: int, baudrate: int = 115200, **kwargs: Any) -> SimUART:
        return SimUART(self._n, id, baudrate, **kwargs)
