"""BLE watchdog, power-cycle command and BlueZ scan parameters, through the real bleak façade.

Each transport runs ``bleak.BleakScanner`` with the simulator backend on a UNIX socket. Time
is a fake clock the test moves, and the watchdog checks when the test lets it (one tick), so
nothing sleeps to wait and an advert never races a check.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import BleConfig
from gateway.flow import Heard
from gateway.metrics import Metrics
from gateway.transports import ble
from gateway.transports.ble import STEPS, BleTransport
from gateway.transports.bluez_conf import parse_scan_params, read_scan_params
from gateway.transports.datagram import send_advert
from gateway.transports.silence import SilenceModel
from tests.test_gw_support import wait_for

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Ticker:
    """The watchdog's wait between checks: one check per ``release``."""

    def __init__(self) -> None:
        self._go = asyncio.Event()

    async def wait(self) -> None:
        await self._go.wait()
        self._go.clear()

    def release(self) -> None:
        self._go.set()


class Rig:
    """One running transport on its own simulated air."""

    def __init__(self, tmp_path: Path, **cfg: Any) -> None:
        self.air = str(tmp_path / "air.sock")
        self.cfg = BleConfig(enabled=True, backend="datagram", datagram_socket=self.air,
                             watchdog_s=120.0, **cfg)
        self.clock = FakeClock()
        self.metrics = Metrics()
        self.heard: list[Heard] = []
        self.ticker = Ticker()
        self.tr = BleTransport(self.cfg, self.heard.append, self.metrics, clock=self.clock,
                               tick=self.ticker.wait)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Rig:
        self.task = asyncio.create_task(self.tr.run())
        await asyncio.wait_for(self.tr.started.wait(), 5)
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def at(self, t: float) -> None:
        """Move the clock to ``t``, let the watchdog check once and wait until it has."""
        self.clock.t = t
        n = self.tr.checks
        self.ticker.release()
        await wait_for(lambda: self.tr.checks > n, what=f"watchdog check at t={t}")

    async def advert(self, t: float, company: int = 0xFFFF) -> None:
        """A node's advert heard at ``t`` (any company id proves the scanner works)."""
        self.clock.t = t
        n = self.metrics.ble_adverts.total()
        send_advert(self.air, "AA:BB:CC:00:00:01", -60, {company: b"\x01\x02"})
        await wait_for(lambda: self.metrics.ble_adverts.total() == n + 1, what=f"advert at t={t}")
        await self.at(t)

    def recoveries(self) -> dict[str, float]:
        return {s: self.metrics.ble_recoveries.get(s) for s in STEPS}


@pytest.fixture
async def rig_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    rigs: list[Rig] = []

    async def make(**cfg: Any) -> Rig:
        r = Rig(tmp_path, **cfg)
        rigs.append(r)
        return await r.start()

    yield make
    for r in rigs:
        await r.stop()


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for a reaper that may not exist in a container counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


# --- SilenceModel: the learned stall threshold (sans-I/O) ---


def test_threshold_is_the_watchdog_until_silences_are_seen() -> None:
    m = SilenceModel(120.0)
    assert m.threshold_s == 120.0
    m.observe(30.0, 10.0)  # below watchdog / 3: cannot matter
    assert m.threshold_s == 120.0 and m.samples == 0


def test_burst_repeats_do_not_hide_the_silences_between_bursts() -> None:
    """25 repeats per burst would put the 95th percentile of raw gaps inside a burst."""
    m = SilenceModel(120.0)
    t = 0.0
    for _ in range(10):
        for _ in range(24):
            t += 0.05
            m.observe(0.05, t)
        t += 1200.0
        m.observe(1200.0, t)
    assert m.threshold_s == 3600.0


def test_one_long_silence_among_many_does_not_set_the_threshold() -> None:
    m = SilenceModel(120.0)
    for i in range(99):
        m.observe(100.0, float(i))
    m.observe(5000.0, 100.0)
    assert m.threshold_s == 300.0


def test_silences_are_forgotten_after_a_day() -> None:
    m = SilenceModel(120.0)
    m.observe(3600.0, 0.0)
    assert m.threshold_s == 10800.0
    m.expire(86400.0)
    assert m.threshold_s == 10800.0
    m.expire(86400.5)
    assert m.threshold_s == 120.0 and m.samples == 0


def test_sample_memory_is_bounded() -> None:
    m = SilenceModel(120.0, max_samples=4)
    for i in range(4):
        m.observe(1000.0, float(i))
    for i in range(4):
        m.observe(100.0, 10.0 + i)
    assert m.samples == 4 and m.threshold_s == 300.0


# --- the watchdog, end to end through bleak ---


async def test_quiet_site_is_not_a_stall(rig_factory: Callable[..., Any]) -> None:
    """Adverts every 100 s teach a 300 s threshold: a 290 s lull escalates nothing."""
    r = await rig_factory()
    for t in range(0, 1001, 100):
        await r.advert(float(t))
    assert r.tr.silences.threshold_s == 300.0
    assert r.metrics.ble_stall_threshold_seconds.get() == 300.0
    assert r.tr.healthy and r.metrics.ble_scanner_healthy.get() == 1
    await r.at(1000.0 + 290.0)  # the configured watchdog_s (120) is long past
    assert r.recoveries() == dict.fromkeys(STEPS, 0.0)
    assert r.tr.healthy
    await r.at(1000.0 + 300.0)
    assert r.recoveries()["restart_scan"] == 1
    assert not r.tr.healthy and r.metrics.ble_scanner_healthy.get() == 0


async def test_recovery_steps_in_order_then_exponential_backoff(
    rig_factory: Callable[..., Any], tmp_path: Path
) -> None:
    """restart (same scanner), re-create, power-cycle; then wait 2x, 4x ... the threshold."""
    log = tmp_path / "power.log"
    cmd = _script(tmp_path / "powercycle", f'echo "$@" >> "{log}"\n')
    r = await rig_factory(adapter="hci1", power_cycle_command=[str(cmd), "{adapter}"])
    await r.advert(0.0)
    timeline: list[tuple[float, list[str], bool, int]] = []
    for t in (119.0, 120.0, 239.0, 240.0, 360.0, 599.0, 600.0, 720.0, 840.0, 1319.0, 1320.0):
        before, scanner, starts = r.recoveries(), r.tr.scanner, r.tr.scan_starts
        await r.at(t)
        after = r.recoveries()
        done = [s for s in STEPS if after[s] > before[s]]
        timeline.append((t, done, r.tr.scanner is scanner, r.tr.scan_starts - starts))
    # (t, step taken, same scanner object, scans started)
    assert timeline == [
        (119.0, [], True, 0),
        (120.0, ["restart_scan"], True, 1),
        (239.0, [], True, 0),
        (240.0, ["recreate_scanner"], False, 1),
        (360.0, ["power_cycle"], False, 1),
        (599.0, [], True, 0),  # backing off: 2 x 120 s after the power cycle
        (600.0, ["restart_scan"], True, 1),
        (720.0, ["recreate_scanner"], False, 1),
        (840.0, ["power_cycle"], False, 1),
        (1319.0, [], True, 0),  # then 4 x 120 s
        (1320.0, ["restart_scan"], True, 1),
    ]
    assert log.read_text().splitlines() == ["hci1", "hci1"]
    assert r.tr.step == 1 and r.metrics.ble_recovery_step.get() == 1


async def test_backoff_reaches_its_cap_and_the_scanner_listens_meanwhile(
    rig_factory: Callable[..., Any]
) -> None:
    r = await rig_factory(backoff_max_s=300.0)
    t, waits = 0.0, []
    for _ in range(4):  # rounds: 3 steps a threshold apart, then the backoff
        for _ in STEPS:
            t += 120.0
            await r.at(t)
        waits.append(r.tr.backoff_s)
        t += r.tr.backoff_s
    assert waits == [240.0, 300.0, 300.0, 300.0]
    assert r.metrics.ble_backoff_seconds.get() == 300.0
    assert r.tr.step == len(STEPS)
    await r.advert(t - 10.0)  # heard while backing off: the stall is over
    assert r.tr.healthy and r.tr.step == 0 and r.tr.backoff_s == 0.0
    assert r.metrics.ble_recovered.get("power_cycle") == 1


async def test_backoff_survives_weeks_of_a_dead_adapter(rig_factory: Callable[..., Any]) -> None:
    r = await rig_factory()
    r.tr.rounds = 5000  # 2.0 ** 5001 would overflow
    for t in (120.0, 240.0, 360.0):
        await r.at(t)
    assert r.tr.backoff_s == 3600.0


async def test_hourly_site_learns_its_rhythm_through_escalations(
    rig_factory: Callable[..., Any]
) -> None:
    """The first hour escalates (nothing learned yet); after one hourly gap it does not."""
    r = await rig_factory()
    await r.advert(0.0)
    for t in (120.0, 240.0, 360.0, 600.0):
        await r.at(t)
    assert r.recoveries()["restart_scan"] == 2
    await r.advert(3600.0)  # the node's next report, long after the last action
    assert r.tr.silences.threshold_s == 3 * 3600.0
    assert r.metrics.ble_recovered.get("restart_scan") == 1
    before = r.recoveries()
    await r.at(3600.0 + 3599.0)
    await r.advert(7200.0)
    await r.at(7200.0 + 3600.0 * 2)  # even a missed report is no stall now
    assert r.recoveries() == before and r.tr.healthy


async def test_a_stall_that_a_restart_fixed_is_not_learned_as_a_silence(
    rig_factory: Callable[..., Any]
) -> None:
    r = await rig_factory()
    for t in range(0, 501, 100):
        await r.advert(float(t))
    assert r.tr.silences.threshold_s == 300.0
    await r.at(800.0)
    assert r.recoveries()["restart_scan"] == 1
    await r.advert(805.0)  # right after the restart: the restart fixed it
    assert r.tr.silences.threshold_s == 300.0  # not 3 x 305 s


async def test_hung_power_cycle_command_is_killed_with_its_children(
    rig_factory: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ble, "_KILL_GRACE_S", 0.2)
    pids = tmp_path / "pids"
    # Ignores TERM, and so does its child: only the group SIGKILL ends them.
    cmd = _script(tmp_path / "hang", f"trap '' TERM\nsleep 1000 &\necho $$ $! > \"{pids}\"\nwait\n")
    r = await rig_factory(power_cycle_command=[str(cmd)], power_cycle_timeout_s=0.3)
    for t in (120.0, 240.0):
        await r.at(t)
    await r.at(360.0)
    assert r.recoveries()["power_cycle"] == 1
    assert r.metrics.ble_power_cycle_failures.get("timeout") == 1
    shell, child = map(int, pids.read_text().split())
    await wait_for(lambda: _gone(shell) and _gone(child), what="command and its child killed")
    assert r.tr.scanner is not None  # and scanning again after it:
    await r.advert(361.0)
    assert r.tr.healthy


async def test_stopping_mid_power_cycle_kills_the_command(
    rig_factory: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ble, "_KILL_GRACE_S", 0.2)
    pids = tmp_path / "pids"
    cmd = _script(tmp_path / "hang", f"sleep 1000 &\necho $$ $! > \"{pids}\"\nwait\n")
    r = await rig_factory(power_cycle_command=[str(cmd)], power_cycle_timeout_s=600.0)
    for t in (120.0, 240.0):
        await r.at(t)
    r.clock.t = 360.0
    r.ticker.release()
    await wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="command running")
    await r.stop()
    shell, child = map(int, pids.read_text().split())
    await wait_for(lambda: _gone(shell) and _gone(child), what="command and its child killed")


@pytest.mark.parametrize(("body", "reason"), [("exit 3\n", "exit"), (None, "exec")])
async def test_failed_power_cycle_is_counted_and_scanning_resumes(
    rig_factory: Callable[..., Any], tmp_path: Path, body: str | None, reason: str
) -> None:
    cmd = tmp_path / "powercycle"
    if body is not None:
        _script(cmd, body)
    r = await rig_factory(power_cycle_command=[str(cmd)])
    for t in (120.0, 240.0, 360.0):
        await r.at(t)
    assert r.metrics.ble_power_cycle_failures.get(reason) == 1
    await r.advert(361.0)
    assert r.tr.healthy


# --- BlueZ scan parameters (main.conf [LE]) ---


@pytest.mark.parametrize(("text", "interval", "window", "verdict"), [
    ("[LE]\nScanIntervalAdvMonitor = 0x0060\nScanWindowAdvMonitor = 0x0060\n", 0x60, 0x60, 1),
    ("[LE]\nScanIntervalAdvMonitor=96\nScanWindowAdvMonitor=0x60\n", 0x60, 0x60, 1),
    ("[LE]\nScanIntervalAdvMonitor=0140\nScanWindowAdvMonitor=96\n", 0x60, 0x60, 1),  # octal, as strtol
    ("[LE]\nScanIntervalAdvMonitor = 0x0100\nScanWindowAdvMonitor = 0x0030\n", 0x100, 0x30, 0),
    ("[General]\nName = gw\n", 0x60, 0x30, 0),  # kernel defaults: a 50 % duty cycle
    ("", 0x60, 0x30, 0),
    ("[LE]\n#ScanIntervalAdvMonitor=\n#ScanWindowAdvMonitor=\n", 0x60, 0x30, 0),
    ("[LE]\nScanWindowAdvMonitor = 0x0060\n", 0x60, 0x60, 1),  # the kernel's interval
    ("[LE]\nScanIntervalAdvMonitor=0x5000\nScanWindowAdvMonitor=0x5000\n", 0x60, 0x30, 0),  # out of range
    ("[LE]\nScanIntervalAdvMonitor=08\nScanWindowAdvMonitor=\n", 0x60, 0x30, 0),  # not integers
    ("[LE]\nscanintervaladvmonitor=0x30\nscanwindowadvmonitor=0x30\n", 0x60, 0x30, 0),  # case matters
    ("[LE]\nScanIntervalAdvMonitor=0x30\n[LE]\nScanIntervalAdvMonitor=0x40\nScanWindowAdvMonitor=0x40\n",
     0x40, 0x40, 1),  # a repeated key: the last one wins
])
def test_scan_params_parsed_like_bluetoothd(text: str, interval: int, window: int,
                                            verdict: int, tmp_path: Path) -> None:
    conf = tmp_path / "main.conf"
    conf.write_text(text)
    p = read_scan_params(conf)
    assert (p.interval, p.window, p.window_equals_interval) == (interval, window, verdict)


def test_scan_params_unknown_when_unreadable_or_unparsable(tmp_path: Path) -> None:
    assert read_scan_params(tmp_path).window_equals_interval == -1  # a directory
    bad = parse_scan_params("ScanWindowAdvMonitor = 1\n[LE]\n")  # no group first
    assert bad.window_equals_interval == -1 and "unparsable" in bad.note
    assert read_scan_params(tmp_path / "absent.conf").window_equals_interval == 0  # kernel's


def test_shipped_main_conf_lines_set_window_equal_to_interval() -> None:
    p = read_scan_params(ROOT / "deploy" / "bluetooth-main.conf")
    assert p.window_equals_interval == 1 and p.note == ""


async def test_gateway_warns_at_start_when_window_differs(
    rig_factory: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "main.conf"
    conf.write_text("[LE]\nScanIntervalAdvMonitor = 0x0100\nScanWindowAdvMonitor = 0x0030\n")
    before = conf.stat()
    with caplog.at_level(logging.WARNING, logger="gateway.transports.ble"):
        r = await rig_factory(bluez_main_conf=conf)
    assert r.metrics.ble_scan_window_equals_interval.get() == 0
    assert "urbansense_gateway_ble_scan_window_equals_interval 0" in r.metrics.render()
    [warning] = [m for m in caplog.messages if "ble_scan_window_not_interval" in m]
    assert "interval_ms=160 window_ms=30" in warning and "ScanWindowAdvMonitor" in warning
    after = conf.stat()  # read-only
    assert (after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (before.st_mtime_ns,
                                                               stat.S_IMODE(before.st_mode))


async def test_simulated_air_has_no_scan_params(rig_factory: Callable[..., Any]) -> None:
    r = await rig_factory()
    assert r.tr.scan_params is None
    assert r.metrics.ble_scan_window_equals_interval.get() == -1
