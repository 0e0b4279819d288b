"""The datagram input: BLE advertisements from a local UNIX datagram socket, as a bleak backend.

With ``ble.backend = "datagram"`` the gateway runs the real ``bleak.BleakScanner`` with
``backend=DatagramScanner``: adverts arrive as datagrams on ``ble.datagram_socket`` (one
advert each, the byte format of urbansense/wire/advert.py and docs/GATEWAY.md) instead of
from BlueZ, and take the same path from there (real ``BLEDevice``/``AdvertisementData``,
the company-id filter, the watchdog). The simulator writes to it; so can any outside tool
(``send_advert``). A datagram that is not an advert is dropped and counted
(``urbansense_gateway_datagrams_malformed_total``).

``seen_devices`` (bleak's table of the devices heard, which nothing here reads) is bounded:
phones rotate their random addresses every few minutes, so a street's table grew by every
address ever heard, about a kilobyte each, for as long as the scan ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any, Literal

from bleak.backends.scanner import (
    AdvertisementData,
    AdvertisementDataCallback,
    BaseBleakScanner,
)

from urbansense.wire.advert import MAX_DATAGRAM, decode_advert, encode_advert

SEEN_DEVICES_MAX = 4096  # ~4 MB at most; then the table starts again (new addresses cost a BLEDevice each)


def send_advert(
    sock_path: str, address: str, rssi_dbm: int, manufacturer_data: dict[int, bytes]
) -> None:
    """Send one advertisement to a gateway's datagram input (blocking: tools and tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(encode_advert(address, rssi_dbm, manufacturer_data), sock_path)


class DatagramScanner(BaseBleakScanner):
    """Receives advertisements from the datagram socket while started (it binds the path)."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "passive",
        *,
        bluez: object = None,  # accepted because BleakScanner always passes it
        cb: object = None,
        datagram_socket: str = "",
        on_malformed: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        del bluez, cb
        if not datagram_socket:
            raise ValueError("DatagramScanner needs datagram_socket=")
        self.seen_devices = {}
        self.scanning_mode = scanning_mode
        self.datagram_socket = datagram_socket
        self._on_malformed = on_malformed
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        if self._sock is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.datagram_socket)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(self.datagram_socket)
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
            os.unlink(self.datagram_socket)

    def set_scanning_filter(self, **kwargs: Any) -> None:
        """Nothing to filter at the source: the gateway filters on the company id."""

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                # One byte over the limit: a longer datagram arrives truncated and is refused.
                data = sock.recv(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        try:
            address, rssi, manufacturer_data = decode_advert(data)
        except ValueError as exc:
            if self._on_malformed is not None:
                self._on_malformed(str(exc))
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
        if len(self.seen_devices) >= SEEN_DEVICES_MAX and address not in self.seen_devices:
            self.seen_devices.clear()
        device = self.create_or_update_device(address, address, None, None, adv)
        self.call_detection_callbacks(device, adv)
