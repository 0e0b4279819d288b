"""BLE transport: passive scanning with bleak, filtered on our company id, with a watchdog.

Adapters and BlueZ stall after hours without an error, but a healthy quiet site is silent
too: BlueZ only delivers our company id, and a node may report once an hour. So the stall
threshold is learned from the silences this site actually has (``SilenceModel``,
gateway/transports/silence.py). A stall is recovered in three steps, each given one
threshold to bring adverts back: restart the scan (same scanner), re-create the scanner,
power-cycle the adapter. A round that fails is followed by an exponential backoff (capped
at an hour) with the scanner listening, then the next round. The transport never exits the
process. At start it checks BlueZ's scan window (gateway/transports/bluez_conf.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner

from gateway.config import BleConfig
from gateway.flow import Heard
from gateway.metrics import Metrics
from gateway.ratelog import RateLimitedLog
from gateway.transports.bluez_conf import BLUEZ_MAIN_CONF, ScanParams, read_scan_params
from gateway.transports.silence import SilenceModel

_log = logging.getLogger(__name__)

STEPS: Final = ("restart_scan", "recreate_scanner", "power_cycle")

_KILL_GRACE_S: Final = 2.0
_SCANNER_CALL_TIMEOUT_S: Final = 20.0  # a wedged BlueZ must not wedge the watchdog too
_POLL_MAX_S: Final = 5.0



def _ms(units: int | None) -> str:
    return "?" if units is None else f"{units * 0.625:g}"


async def run_command(argv: Sequence[str], timeout_s: float) -> int | None:
    """Run ``argv`` in its own process group; on timeout (or cancellation) kill the group.

    Returns the exit status, or None when it was killed.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, start_new_session=True
    )
    finished = False
    try:
        async with asyncio.timeout(timeout_s):
            rc = await proc.wait()
        finished = True
        return rc
    except TimeoutError:
        return None
    finally:
        if not finished:
            await _kill_group(proc)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # TERM first so a script can clean up; KILL the whole group after, for what ignored it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_KILL_GRACE_S):
            await proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


class BleTransport:
    """Scanner plus watchdog (a ``Transport``).

    ``clock`` and ``tick`` (awaited between two watchdog checks) let tests drive time.
    """

    def __init__(self, cfg: BleConfig, put: Callable[[Heard], None], metrics: Metrics, *,
                 clock: Callable[[], float] = time.monotonic,
                 tick: Callable[[], Awaitable[None]] | None = None) -> None:
        self.cfg = cfg
        self.put = put
        self.metrics = metrics
        self._clock = clock
        poll_s = min(max(cfg.watchdog_s / 4, 0.01), _POLL_MAX_S)
        self._tick = tick or (lambda: asyncio.sleep(poll_s))
        self.healthy = False
        self.step = 0  # recovery steps taken in the current stall; len(STEPS): backing off
        self.backoff_s = 0.0
        self.rounds = 0  # failed recovery rounds in the current stall
        self.checks = 0  # finished watchdog checks
        self.scan_starts = 0  # successful scanner (re)starts
        self.started = asyncio.Event()
        self.silences = SilenceModel(cfg.watchdog_s)
        self.scan_params: ScanParams | None = None
        self._scanner: BleakScanner | None = None
        self._company = cfg.company_id
        self._heard = False  # an advert since the last (re)start: only that proves health
        self._last_advert_s: float | None = None
        self._last_action_s = clock()  # the last (re)start, or attempt
        m = metrics
        self._m_step, self._m_threshold, self._m_backoff = (
            m.ble_recovery_step, m.ble_stall_threshold_seconds, m.ble_backoff_seconds)
        self._m_recovered, self._m_power_fail = m.ble_recovered, m.ble_power_cycle_failures
        self._m_scan_params = m.ble_scan_window_equals_interval
        self._faults = RateLimitedLog(_log)
        self._m_threshold.set(self.silences.threshold_s)
        self._m_step.set(0)
        self._m_backoff.set(0)
        self._m_scan_params.set(-1)

    kind = "ble"

    @property
    def name(self) -> str:
        return self.adapter

    def status(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "recovery_step": self.step}

    @property
    def scanner(self) -> BleakScanner | None:
        return self._scanner

    @property
    def adapter(self) -> str:
        return self.cfg.adapter or "hci0"

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        now = self._clock()
        last = self._last_advert_s
        if last is not None:
            # A silence ended right after a recovery action was (probably) a stall the
            # action fixed, not a quiet spell: learning it would ratchet the threshold up.
            fixed = self._last_action_s > last and now - self._last_action_s < self.silences.floor_s
            if not fixed:
                self.silences.observe(now - last, now)
        self._last_advert_s = now
        self._heard = True
        self.metrics.ble_adverts.inc()
        data = adv.manufacturer_data.get(self._company)
        if data is not None:
            self.put(Heard(bytes(data), "ble", rssi_dbm=adv.rssi))

    def _on_malformed_datagram(self, why: str) -> None:
        self.metrics.datagrams_malformed.inc()
        self._faults.log("datagram_malformed", "event=datagram_malformed socket=%s detail=%s",
                         self.cfg.datagram_socket, why)

    def _make_scanner(self) -> BleakScanner:
        backend: type[BaseBleakScanner] | None = None
        kwargs: dict[str, Any] = {}
        bluez: dict[str, Any] = {}
        if self.cfg.backend == "datagram":
            from gateway.transports.datagram import DatagramScanner

            backend = DatagramScanner
            kwargs["datagram_socket"] = self.cfg.datagram_socket
            kwargs["on_malformed"] = self._on_malformed_datagram
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

    def _set_step(self, step: int) -> None:
        self.step = step
        self._m_step.set(step)

    def check_scan_params(self) -> ScanParams | None:
        """Warn when BlueZ's scan window is shorter than its interval (adverts fall in gaps)."""
        configured = self.cfg.bluez_main_conf
        if configured:
            path = Path(configured)
        elif self.cfg.backend == "bleak":
            path = BLUEZ_MAIN_CONF
        else:
            return None  # the simulated air has no scan window
        p = read_scan_params(path)
        self.scan_params = p
        self._m_scan_params.set(p.window_equals_interval)
        fields = (f"path={path} interval_ms={_ms(p.interval)} window_ms={_ms(p.window)} "
                  f"note={p.note!r}")
        if p.window_equals_interval == 1:
            _log.info("event=ble_scan_params ok %s", fields)
        elif p.window_equals_interval == 0:
            _log.warning(
                "event=ble_scan_window_not_interval %s: the radio is deaf between windows, "
                "so some adverts are never heard; set ScanIntervalAdvMonitor = "
                "ScanWindowAdvMonitor in [LE] (deploy/bluetooth-main.conf) and restart "
                "bluetooth", fields)
        else:
            _log.warning("event=ble_scan_params_unknown %s", fields)
        return p

    async def _start(self, recreate: bool) -> None:
        """(Re)start scanning: the same scanner unless ``recreate`` (or there is none)."""
        self._last_action_s = self._clock()  # give the new scan a full threshold
        self._heard = False
        await self._stop()
        if recreate or self._scanner is None:
            self._scanner = self._make_scanner()
        async with asyncio.timeout(_SCANNER_CALL_TIMEOUT_S):
            await self._scanner.start()
        self._last_action_s = self._clock()
        self.scan_starts += 1
        self.started.set()

    async def _stop(self) -> None:
        if self._scanner is not None:
            try:
                async with asyncio.timeout(_SCANNER_CALL_TIMEOUT_S):
                    await self._scanner.stop()
            except Exception as exc:  # a wedged adapter: we are restarting or replacing it
                _log.info("event=ble_stop_failed error=%r", exc)

    async def _power_cycle(self) -> None:
        argv = [a.replace("{adapter}", self.adapter) for a in self.cfg.power_cycle_command]
        if not argv:
            _log.warning("event=ble_power_cycle_skipped reason=no_power_cycle_command")
            return
        timeout_s = self.cfg.power_cycle_timeout_s
        try:
            rc = await run_command(argv, timeout_s)
        except OSError as exc:
            self._m_power_fail.inc("exec")
            _log.error("event=ble_power_cycle_failed argv=%r error=%r", argv, exc)
            return
        if rc is None:
            self._m_power_fail.inc("timeout")
            _log.error("event=ble_power_cycle_failed argv=%r error=timeout_killed timeout_s=%g",
                       argv, timeout_s)
        elif rc != 0:
            self._m_power_fail.inc("exit")
            _log.error("event=ble_power_cycle_failed argv=%r rc=%d", argv, rc)
        else:
            _log.info("event=ble_power_cycled adapter=%s", self.adapter)

    async def run(self) -> None:
        self.check_scan_params()
        try:
            try:
                await self._start(recreate=True)
            except Exception as exc:  # BleakError, D-Bus gone, adapter absent
                _log.error("event=ble_start_failed error=%r", exc)
            while True:
                await self._tick()
                await self._check(self._clock())
                self.checks += 1
        finally:
            await self._stop()
            self._health(False)

    async def _check(self, now: float) -> None:
        self.silences.expire(now)
        threshold_s = self.silences.threshold_s
        self._m_threshold.set(threshold_s)
        if self._heard:
            if self.step:
                self._m_recovered.inc(STEPS[self.step - 1])
                _log.info("event=ble_recovered after_step=%s rounds=%d", STEPS[self.step - 1],
                          self.rounds)
            elif not self.healthy:
                _log.info("event=ble_scanner_healthy")
            self._health(True)
            self._set_step(0)
            self.rounds = 0
            self.backoff_s = 0.0
            self._m_backoff.set(0)
        since_s = self._last_action_s
        if self._last_advert_s is not None:
            since_s = max(since_s, self._last_advert_s)
        silent_s = now - since_s
        backing_off = self.step >= len(STEPS)
        if silent_s < (self.backoff_s if backing_off else threshold_s):
            return
        if backing_off:
            self._set_step(0)  # the backoff is over: a new round
        self._health(False)
        step = STEPS[self.step]
        self._set_step(self.step + 1)
        self.metrics.ble_recoveries.inc(step)
        _log.warning("event=ble_scanner_silent silent_s=%.1f threshold_s=%.1f step=%s round=%d",
                     silent_s, threshold_s, step, self.rounds + 1)
        await self._recover(step)
        if self.step == len(STEPS):
            self.rounds += 1
            # min(): 2.0 ** rounds overflows after weeks of a dead adapter.
            self.backoff_s = min(threshold_s * 2.0 ** min(self.rounds, 32),
                                 self.cfg.backoff_max_s)
            self.backoff_s = max(self.backoff_s, threshold_s)
            self._m_backoff.set(self.backoff_s)
            _log.warning("event=ble_recovery_round_failed rounds=%d next_round_in_s=%.0f",
                         self.rounds, self.backoff_s)

    async def _recover(self, step: str) -> None:
        if step == "power_cycle":
            await self._stop()
            self._scanner = None  # the adapter goes away under it
            await self._power_cycle()
        try:
            await self._start(recreate=step != "restart_scan")
        except Exception as exc:  # BleakError, D-Bus gone, adapter absent: next step later
            _log.error("event=ble_start_failed step=%s error=%r", step, exc)
