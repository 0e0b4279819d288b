"""A bleak scanner backend fed by a UNIX datagram socket: the simulated air.

Each datagram is a CBOR list ``[address: str, rssi: int, {company_id: bytes}]``. The gateway
runs the real ``bleak.BleakScanner`` with ``backend=SimulatedScanner``; the simulator and the
tests send advertisements to the socket. The socket path comes from ``sim_socket=`` (passed
through BleakScanner) or the ``URBANSENSE_SIM_AIR`` environment variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, Literal

import cbor2
from bleak.backends.scanner import (
    AdvertisementData,
    AdvertisementDataCallback,
    BaseBleakScanner,
)

ENV_SOCKET = "URBANSENSE_SIM_AIR"
_MAX_DATAGRAM = 512


def encode_advert(address: str, rssi_dbm: int, manufacturer_data: dict[int, bytes]) -> bytes:
    """The datagram a sender writes to the air socket."""
    return cbor2.dumps([address, rssi_dbm, manufacturer_data])


def send_advert(
    sock_path: str, address: str, rssi_dbm: int, manufacturer_data: dict[int, bytes]
) -> None:
    """Send one advertisement (blocking, for tests and the simulator)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(encode_advert(address, rssi_dbm, manufacturer_data), sock_path)


class SimulatedScanner(BaseBleakScanner):
    """Receives advertisements from the air socket while started."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "passive",
        *,
        bluez: object = None,  # accepted because BleakScanner always passes it
        cb: object = None,
        sim_socket: str | None = None,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        del bluez, cb
        self.seen_devices = {}
        self.scanning_mode = scanning_mode
        path = sim_socket or os.environ.get(ENV_SOCKET, "")
        if not path:
            raise ValueError(f"SimulatedScanner needs sim_socket= or ${ENV_SOCKET}")
        self.sim_socket = path
        self.malformed = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        if self._sock is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sim_socket)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(self.sim_socket)
        self._sock = sock
        self.seen_devices = {}
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    async def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sim_socket)

    def set_scanning_filter(self, **kwargs: Any) -> None:
        """Nothing to filter at the source: the gateway filters on the company id."""

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        try:
            address, rssi, mfr = cbor2.loads(data)
            if not isinstance(address, str) or type(rssi) is not int or not isinstance(mfr, dict):
                raise ValueError("bad advert shape")
            manufacturer_data = {int(k): bytes(v) for k, v in mfr.items()}
        except (ValueError, TypeError, cbor2.CBORDecodeError, OverflowError, RecursionError):
            self.malformed += 1
            return
        adv = AdvertisementData(
            local_name=None,
            manufacturer_data=manufacturer_data,
            service_data={},
            service_uuids=[],
            tx_power=None,
            rssi=rssi,
            platform_data=(data,),
        )
        device = self.create_or_update_device(address, address, None, None, adv)
        self.call_detection_callbacks(device, adv)
