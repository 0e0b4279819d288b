"""Both HALs the firmware runs on off a board keep the one contract of docs/HAL.md
(simulator/hal_contract.py): the simulator's (also checked by mypy) and the tests' fake
(tests/fw_fakes.py, untyped MicroPython-subset code, so checked here member by member).
The reset and wake numbers have one home, simulator/esp32_port.py, which both HALs and the
firmware agree with."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any

import pytest

from simulator import esp32_port, hal_contract
from simulator.firmware_loader import firmware_module
from simulator.sim import Simulation
from tests import fw_fakes as ff

SCENARIO = {"sim": {"name": "contract", "duration": "60s"}, "nodes": [
    {"kind": "parking", "count": 1, "board": "city-wroom32e", "transport": "serial"},
    {"kind": "bin", "count": 1, "board": "esp32c3-devkitm-1", "transport": "serial"}]}

# The arguments that make the object a factory returns (the object is then checked too).
EXAMPLES: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "Pin": ((4,), {}),
    "SoftI2C": ((), {"scl": 22, "sda": 21}),
    "ADC": ((), {}),  # a Pin of the same HAL is passed
    "UART": ((1, 115200), {"tx": 17, "rx": 16}),
    "RTC": ((), {}),
    "WDT": ((), {"timeout": 5000}),
    "NVS": (("us",), {}),
    "BLE": ((), {}),
}
_P, _PK, _K = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
               inspect.Parameter.KEYWORD_ONLY)


def _calls(sig: inspect.Signature) -> list[tuple[list[Any], dict[str, Any]]]:
    """Every way the contract lets a caller pass arguments: the required ones only, all of
    them positionally where allowed, and the positional-or-keyword ones by name."""
    params = list(sig.parameters.values())[1:]  # self
    req = [p for p in params if p.default is p.empty]
    return [
        ([0 for p in req if p.kind in (_P, _PK)], {p.name: 0 for p in req if p.kind == _K}),
        ([0 for p in params if p.kind in (_P, _PK)], {p.name: 0 for p in params if p.kind == _K}),
        ([0 for p in params if p.kind == _P], {p.name: 0 for p in params if p.kind in (_PK, _K)}),
    ]


def _is_protocol(t: Any) -> bool:
    return isinstance(t, type) and getattr(t, "_is_protocol", False)


def _check(impl: Any, proto: type, path: str, problems: list[str], machine: Any = None) -> None:
    """Every member of ``proto`` on ``impl``: constants of the right type, callables that
    accept every call the contract allows, and what a factory makes, recursively."""
    for name, member in vars(proto).items():
        if name.startswith("_") and name != "__call__":
            continue
        where = f"{path}()" if name == "__call__" else f"{path}.{name}"
        target = impl if name == "__call__" else getattr(impl, name, None)
        if target is None:
            problems.append(f"{where}: missing")
            continue
        if isinstance(member, property):
            want = typing.get_type_hints(member.fget)["return"]
            if _is_protocol(want):
                _check(target, want, where, problems, machine)
            elif not isinstance(target, want):
                problems.append(f"{where}: {target!r} is not {want.__name__}")
            continue
        try:
            impl_sig = inspect.signature(target)
        except (TypeError, ValueError):
            problems.append(f"{where}: not callable")
            continue
        for args, kwargs in _calls(inspect.signature(member)):
            try:
                impl_sig.bind(*args, **kwargs)
            except TypeError as exc:
                problems.append(f"{where}{impl_sig} refuses ({len(args)} positional, {sorted(kwargs)}): {exc}")
                break
        made = typing.get_type_hints(member)["return"]
        key = path.rsplit(".", 1)[-1] if name == "__call__" else name
        if _is_protocol(made) and key in EXAMPLES:
            args, kwargs = EXAMPLES[key]
            if key == "ADC":
                args = (machine.Pin(35),)
            _check(target(*args, **kwargs), made, f"{where}", problems, machine)


def _problems(hal: Any) -> list[str]:
    problems: list[str] = []
    _check(hal, hal_contract.HAL, "hal", problems, hal.machine)
    return problems


def _sim_hals() -> dict[str, Any]:
    sim = Simulation(SCENARIO)
    try:
        return {n.board["chip"]: n.hal for n in sim.nodes}
    finally:
        sim.close()


def _fake_hals() -> dict[str, Any]:
    return {"ESP32": ff.make_world("parking").hal(), "ESP32-C3": ff.make_world("bin", board=ff.BOARD_C3).hal()}


def test_the_simulated_hal_keeps_the_contract() -> None:
    hals = _sim_hals()
    assert set(hals) == {"ESP32", "ESP32-C3"}
    for hal in hals.values():
        assert _problems(hal) == []


def test_the_tests_fake_hal_keeps_the_contract() -> None:
    for hal in _fake_hals().values():
        assert _problems(hal) == []


def test_the_check_finds_a_broken_hal() -> None:
    """Not vacuous: a missing member, a signature that refuses a keyword, a wrong constant."""
    hal = ff.make_world("parking").hal()
    del hal.time
    hal.machine.PWRON_RESET = "1"

    def gap_advertise(interval_us: int, adv_data: Any = None) -> None: ...

    ble = hal.bluetooth.BLE()
    hal.bluetooth.BLE = lambda: ble
    ble.gap_advertise = gap_advertise
    found = "\n".join(_problems(hal))
    assert "hal.time: missing" in found
    assert "hal.machine.PWRON_RESET" in found
    assert "hal.bluetooth.BLE.gap_advertise" in found and "connectable" in found


@pytest.mark.parametrize("chip", ["ESP32", "ESP32-C3"])
def test_both_hals_offer_the_same_chip_dependent_wake_functions(chip: str) -> None:
    for hal in (_sim_hals()[chip], _fake_hals()[chip]):
        have = {n for n in ("wake_on_ext0", "wake_on_ext1", "wake_on_gpio") if hasattr(hal.esp32, n)}
        assert have == set(hal_contract.CHIP_WAKE_FUNCTIONS[chip])


def test_reset_and_wake_numbers_have_one_home() -> None:
    """Both HALs take them from simulator/esp32_port.py; the firmware's own copy agrees."""
    names = ("PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET",
             "PIN_WAKE", "EXT0_WAKE", "EXT1_WAKE", "TIMER_WAKE", "ULP_WAKE")
    for hal in (*_sim_hals().values(), *_fake_hals().values()):
        assert {n: getattr(hal.machine, n) for n in names} == {n: getattr(esp32_port, n) for n in names}
    us_wake = firmware_module("us_wake")
    assert (us_wake.EXT0_WAKE, us_wake.EXT1_WAKE, us_wake.GPIO_WAKE) == (
        esp32_port.EXT0_WAKE, esp32_port.EXT1_WAKE, esp32_port.GPIO_WAKE)
    assert (esp32_port.PWRON_RESET, esp32_port.DEEPSLEEP_RESET, esp32_port.TIMER_WAKE) == (1, 4, 4)


def test_the_fakes_hardware_i2c_takes_the_ports_arguments() -> None:
    """machine.I2C(id, /, *, scl, sda, freq=400_000, timeout=50_000) in micropython-esp32-stubs
    (the doctor's board code may use it): the fake takes the same names, kinds and defaults
    (its id is not positional-only: MicroPython's parser has no "/")."""
    import ast
    import site

    stub = next(Path(d) / "machine.pyi" for d in site.getsitepackages() if (Path(d) / "machine.pyi").exists())
    tree = ast.parse(stub.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "I2C")
    inits = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
    wanted = next(f.args for f in inits if [a.arg for a in f.args.kwonlyargs][:2] == ["scl", "sda"])
    want = [(a.arg, d is None) for a, d in zip(wanted.kwonlyargs, wanted.kw_defaults, strict=True)]
    fake = ff.FakeMachine(ff.make_world("parking")).I2C
    params = list(inspect.signature(fake.__init__).parameters.values())[1:]
    assert [p.name for p in params[:1]] == [a.arg for a in wanted.posonlyargs[1:] + wanted.args[1:]][:1] == ["id"]
    got = [(p.name, p.default is inspect.Parameter.empty) for p in params if p.kind is p.KEYWORD_ONLY]
    assert got == want
