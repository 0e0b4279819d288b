"""BLE transport: passive scanning with bleak, filtered on our company id, with a watchdog.

Adapters and BlueZ stall after hours without an error. When no advertisement at all has been
seen for ``watchdog_s``, recovery escalates: restart the scan, then re-create the scanner,
then run the configured power-cycle command (e.g. ``btmgmt power off/on``), then again from
the top with backoff. The transport never exits the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner

from gateway.config import BleConfig
from gateway.metrics import Metrics
from gateway.verify import Heard

_log = logging.getLogger(__name__)

STEPS = ("restart_scan", "recreate_scanner", "power_cycle")


class BleTransport:
    def __init__(self, cfg: BleConfig, put: Callable[[Heard], None], metrics: Metrics) -> None:
        self.cfg = cfg
        self.put = put
        self.metrics = metrics
        self.last_advert_s = time.monotonic()
        self.healthy = False
        self.step = 0
        self.started = asyncio.Event()
        self._scanner: BleakScanner | None = None
        self._company = cfg.company_id
        self._heard = False  # an advert since the last (re)start: only that proves health

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self.last_advert_s = time.monotonic()
        self._heard = True
        self.metrics.ble_adverts.inc()
        data = adv.manufacturer_data.get(self._company)
        if data is not None:
            self.put(Heard(bytes(data), "ble", rssi_dbm=adv.rssi))

    def _make_scanner(self) -> BleakScanner:
        backend: type[BaseBleakScanner] | None = None
        kwargs: dict[str, Any] = {}
        bluez: dict[str, Any] = {}
        if self.cfg.backend == "simulator":
            from simulator.bleak_backend import SimulatedScanner

            backend = SimulatedScanner
            kwargs["sim_socket"] = self.cfg.sim_socket
        else:
            # BlueZ only scans passively with an advertisement-monitor pattern.
            from bleak.args.bluez import OrPattern
            from bleak.assigned_numbers import AdvertisementDataType

            bluez["or_patterns"] = [
                OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA,
                          self._company.to_bytes(2, "little"))
            ]
            if self.cfg.adapter:
                bluez["adapter"] = self.cfg.adapter
        return BleakScanner(
            self._on_advert, None, "passive", bluez=bluez, backend=backend, **kwargs  # type: ignore[arg-type]
        )

    def _health(self, healthy: bool) -> None:
        self.healthy = healthy
        self.metrics.ble_scanner_healthy.set(1 if healthy else 0)

    async def _start(self, recreate: bool) -> None:
        if recreate or self._scanner is None:
            await self._stop()
            self._scanner = self._make_scanner()
        await self._scanner.start()
        self.last_advert_s = time.monotonic()  # give the new scan a full watchdog period
        self._heard = False
        self.started.set()

    async def _stop(self) -> None:
        if self._scanner is not None:
            try:
                await self._scanner.stop()
            except Exception as exc:  # a wedged adapter: we are replacing it anyway
                _log.info("event=ble_stop_failed error=%r", exc)

    async def _power_cycle(self) -> None:
        cmd = self.cfg.power_cycle_command
        if not cmd:
            return
        try:
            proc = await asyncio.create_subprocess_exec(*cmd)
            await asyncio.wait_for(proc.wait(), 30)
        except (OSError, TimeoutError) as exc:
            _log.error("event=ble_power_cycle_failed error=%r", exc)

    async def run(self) -> None:
        try:
            await self._supervise()
        finally:
            await self._stop()
            self._health(False)

    async def _supervise(self) -> None:
        period_s = max(self.cfg.watchdog_s / 4, 0.01)
        started = False
        while True:
            if not started:
                try:
                    await self._start(recreate=self.step >= 1)
                    started = True
                except Exception as exc:  # BleakError, D-Bus gone, adapter absent
                    _log.error("event=ble_start_failed step=%d error=%r", self.step, exc)
                    self._health(False)
                    await self._escalate()
                    continue
            await asyncio.sleep(period_s)
            silent_s = time.monotonic() - self.last_advert_s
            if silent_s < self.cfg.watchdog_s:
                if self._heard:
                    if not self.healthy:
                        _log.info("event=ble_scanner_healthy")
                    self._health(True)
                    self.step = 0
                continue
            self._health(False)
            _log.warning("event=ble_scanner_silent silent_s=%.1f step=%s", silent_s, STEPS[self.step])
            await self._escalate()
            started = False

    async def _escalate(self) -> None:
        step = STEPS[self.step]
        self.metrics.ble_recoveries.inc(step)
        if step == "restart_scan" and self._scanner is not None:
            await self._stop()
        elif step == "recreate_scanner":
            await self._stop()
            self._scanner = None
        elif step == "power_cycle":
            await self._stop()
            self._scanner = None
            await self._power_cycle()
            await asyncio.sleep(min(self.cfg.watchdog_s, 30.0))
        self.step = (self.step + 1) % len(STEPS)
