"""firmware/main.py runs around every cycle: a failed cycle costs a 600 s deep sleep, as on a board."""

from __future__ import annotations

import types
from typing import Any

import pytest

from simulator.energy import FALLBACK_PROFILE
from simulator.esp32_port import DEEPSLEEP_RESET, TIMER_WAKE, WDT_RESET
from simulator.firmware_loader import firmware_module
from simulator.sim import Simulation

SCENARIO = {
    "sim": {"name": "main", "seed": 4, "board": "no-such-board"},  # fallback profile: known figures
    "gateways": [{"id": "gw"}],
    "nodes": [{"kind": "water", "count": 1}],
}


def _firmware(run_cycle: Any) -> types.ModuleType:
    fw = types.ModuleType("fake_node")
    fw.run_cycle = run_cycle  # type: ignore[attr-defined]
    return fw


def _boots(sim: Simulation) -> list[tuple[float, int, int]]:
    node = sim.nodes[0]
    boots: list[tuple[float, int, int]] = []
    boot = node.boot

    def record(t: float, cause: int, wake: int) -> None:
        boots.append((t, cause, wake))
        boot(t, cause, wake)

    node.boot = record  # type: ignore[method-assign]
    return boots


def test_a_firmware_exception_ends_in_main_py_s_600_s_deep_sleep() -> None:
    def run_cycle(hal: Any) -> int:
        hal.machine.WDT(timeout=30_000)  # as us_node does: the watchdog is running
        hal.time.sleep_ms(20)
        raise ZeroDivisionError("division by zero")

    sim = Simulation(SCENARIO, firmware=_firmware(run_cycle))
    node = sim.nodes[0]
    boots = _boots(sim)
    t0 = sim.engine.next_time()
    assert t0 is not None
    sim.engine.run_until(t0)
    assert node.errors == {"ZeroDivisionError: division by zero": 1}
    assert node.console[-1] == "urbansense: cycle failed: ZeroDivisionError division by zero"
    f = {k: v["value"] for k, v in FALLBACK_PROFILE.items()}
    awake_s = f["boot_ms"] / 1000 + sim.firmware_cpu_s + 0.020  # not 30 s at the REPL
    assert node.t - t0 == pytest.approx(awake_s)
    assert node.meter.uc["cpu"] == pytest.approx(f["active_ma"] * 1000 * (sim.firmware_cpu_s + 0.020))
    t_sleep = node.t
    sim.engine.run_until(t_sleep + 600.0)
    assert len(boots) == 2 and boots[1] == (pytest.approx(t_sleep + 600.0), DEEPSLEEP_RESET, TIMER_WAKE)
    assert node.meter.uc["sleep"] == pytest.approx(f["deep_sleep_ua"] * 600.0)
    assert node.errors["ZeroDivisionError: division by zero"] == 2 and not node.hung


def test_an_escape_from_main_py_idles_at_the_repl_until_the_watchdog() -> None:
    """A run_cycle that returns no number makes main.py's deepsleep(int(...)) raise outside
    its try: the board sits at the REPL until the watchdog resets it, as on the port."""
    def run_cycle(hal: Any) -> None:
        hal.machine.WDT(timeout=30_000)
        return None

    sim = Simulation(SCENARIO, firmware=_firmware(run_cycle))
    node = sim.nodes[0]
    boots = _boots(sim)
    t0 = sim.engine.next_time()
    assert t0 is not None
    sim.engine.run_until(t0 + 40.0)
    assert list(node.errors.values()) == [2]  # and again after the reset
    assert next(iter(node.errors)).startswith("main.py: TypeError")
    assert boots[1][1:] == (WDT_RESET, 0)
    assert boots[1][0] == pytest.approx(t0 + FALLBACK_PROFILE["boot_ms"]["value"] / 1000 + sim.firmware_cpu_s + 30.0)


def test_a_float_sleep_is_refused_by_machine_deepsleep_like_the_port() -> None:
    """machine.deepsleep(60000.0) raises TypeError on the ESP32 port (an MP_ARG_INT); main.py
    converts, so a float from config arithmetic still sleeps."""
    seen: list[str] = []

    def run_cycle(hal: Any) -> float:
        hal.machine.WDT(timeout=30_000)
        try:
            hal.machine.deepsleep(1.5)
        except TypeError as exc:
            seen.append(str(exc))
        return 60_000.0

    sim = Simulation(SCENARIO, firmware=_firmware(run_cycle))
    node = sim.nodes[0]
    boots = _boots(sim)
    t0 = sim.engine.next_time()
    assert t0 is not None
    sim.engine.run_until(t0 + 70.0)
    assert seen and "float" in seen[0]
    assert not node.errors and boots[1][1:] == (DEEPSLEEP_RESET, TIMER_WAKE)


def test_main_py_s_imports_leave_sys_modules_after_a_boot_and_after_a_run() -> None:
    import sys

    seen: list[tuple[str, ...]] = []

    def run_cycle(hal: Any) -> int:
        seen.append(tuple(n for n in ("machine", "esp32", "bluetooth", "us_hal_esp32") if n in sys.modules))
        return 60_000

    sim = Simulation(SCENARIO, firmware=_firmware(run_cycle))
    t0 = sim.engine.next_time()
    assert t0 is not None
    sim.engine.run_until(t0)  # one boot outside a run: bound for main.py, then gone
    assert seen == [("machine", "esp32", "bluetooth", "us_hal_esp32")]
    assert not {"machine", "esp32", "bluetooth", "us_hal_esp32"} & set(sys.modules)
    sim.run_until(t0 + 600.0)  # a run: bound from boot to boot, gone at its end
    assert len(seen) > 2
    assert not {"machine", "esp32", "bluetooth", "us_hal_esp32"} & set(sys.modules)
    with pytest.raises(ImportError):
        import machine  # noqa: F401
    us_node = firmware_module("us_node")  # the firmware module again, not main.py's shim

    assert hasattr(us_node, "Node")


def test_a_stand_in_firmware_never_stays_behind_as_us_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """Booted while the real us_node was not imported, a test's stand-in once stayed in
    sys.modules as us_node: every later Simulation in the process ran the stand-in."""
    import sys

    monkeypatch.delitem(sys.modules, "us_node", raising=False)
    fw = _firmware(lambda hal: 60_000)
    sim = Simulation(SCENARIO, firmware=fw)
    t0 = sim.engine.next_time()
    assert t0 is not None
    sim.run_until(t0 + 600.0)
    assert sys.modules.get("us_node") is not fw
