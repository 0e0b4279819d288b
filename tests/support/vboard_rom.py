"""What a virtual board's chip holds outside its filesystem (tools/vboard.mjs ``--rom``).

    rom = make_rom(tmp_path / "rom", hardware=Hardware(board, lis3mdl_nt=(20000, -5000, 42000)))
    with VirtualBoard(tmp_path / "flash", rom_dir=rom) as vb: ...

- ``hardware``: the simulated parts of tests/fw_fakes.py (the register-level LIS3MDL and
  VL53L1X, pins, the battery ADC, RTC memory, NVS) behind the port's own module names
  ``machine``, ``esp32`` and ``bluetooth``, installed by ``_boot.py`` at every boot before
  boot.py runs (where the ESP32 port's frozen _boot.py runs). The fakes mirror the port's API
  (tests/test_hal_contract.py checks them against the HAL contract, which follows
  micropython-esp32-stubs). Sensors answer on I2C only while the board's ``sensor_power`` pin
  is high, as behind the city board's load switch. NVS is flash: what a command commits is
  kept in ``nvs.json`` across soft resets and replugs; RTC memory and pin levels start anew
  at every boot, as after a power-up.
- ``frozen``: modules the "image" holds, as compiled .mpy files. ``_boot.py`` imports each at
  boot and gives it the name a frozen module has (``us_node.py``, no file on the board), so
  ``import us_node`` finds it before ``/lib`` as the ESP32 port's ``.frozen`` does. Unlike a
  real frozen image they are imported at boot, not on first use; one whose import fails there
  (a module that needs a part the rom lacks) is left out.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FAKES = (ROOT / "tests" / "fw_fakes.py", ROOT / "simulator" / "esp32_port.py",
         ROOT / "simulator" / "part_registers.py")

BOOT = r'''
import sys, json, os, binascii


def _nvs_load():
    try:
        raw = json.loads(open('/rom/nvs.json').read())
    except OSError:
        return {}
    out = {}
    for ns in raw:
        d = out[ns] = {}
        for k in raw[ns]:
            v = raw[ns][k]
            d[k] = binascii.unhexlify(v[1]) if v[0] == 'b' else v[1]
    return out


def _nvs_save(nvs):
    raw = {}
    for ns in nvs:
        d = raw[ns] = {}
        for k in nvs[ns]:
            v = nvs[ns][k]
            d[k] = ['b', binascii.hexlify(v).decode()] if isinstance(v, bytes) else ['i', v]
    with open('/rom/nvs.json', 'w') as f:
        f.write(json.dumps(raw))


def _hardware(hw):
    sys.path.insert(0, '/rom')
    try:
        import fw_fakes
    finally:
        sys.path.pop(0)
    board = hw['board']
    w = fw_fakes.World('{}', board)
    w.nvs = _nvs_load()
    if hw.get('lis3mdl_nt') is not None:
        w.i2c_devices[board.get('lis3mdl_addr', 0x1C)] = fw_fakes.FakeLIS3MDL(
            hw['lis3mdl_nt'], int_pin=board['pins'].get('mag_int'), world=w)
    if hw.get('vl53l1x_mm') is not None:
        w.i2c_devices[0x29] = fw_fakes.FakeVL53L1X(hw['vl53l1x_mm'])
    for pin in hw.get('pins', {}):
        w.pins[int(pin)] = hw['pins'][pin]
    for pin in hw.get('adc_uv', {}):
        w.adc_uv[int(pin)] = hw['adc_uv'][pin]

    class NVS(fw_fakes.FakeNVS):
        def commit(self):  # the port's NVS keeps what was committed
            _nvs_save(w.nvs)

    hal = w.hal()
    hal.esp32.NVS = lambda namespace: NVS(w, namespace)
    sys.modules['machine'] = hal.machine
    sys.modules['esp32'] = hal.esp32
    sys.modules['bluetooth'] = hal.bluetooth


def _frozen():
    names = sorted(n[:-4] for n in os.listdir('/rom/frozen') if n.endswith('.mpy'))
    sys.path.insert(0, '/rom/frozen')
    loaded = []
    try:
        for n in names:
            try:
                __import__(n)
                loaded.append(n)
            except ImportError:
                pass
    finally:
        sys.path.pop(0)
    for n in loaded:
        sys.modules[n].__file__ = n + '.py'


def _install():
    spec = json.loads(open('/rom/rom.json').read())
    if spec.get('hardware') is not None:
        _hardware(spec['hardware'])
    if spec.get('frozen'):
        _frozen()


_install()
'''


@dataclass
class Hardware:
    """The parts on the board: a LIS3MDL seeing ``lis3mdl_nt`` (x, y, z nT) and/or a VL53L1X
    ranging ``vl53l1x_mm``; pin levels driven from outside; ADC inputs in microvolts."""

    board: dict[str, Any]
    lis3mdl_nt: tuple[int, int, int] | None = None
    vl53l1x_mm: list[int] | None = None
    pins: dict[int, int] = field(default_factory=dict)
    adc_uv: dict[int, int] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        return {"board": self.board, "lis3mdl_nt": self.lis3mdl_nt, "vl53l1x_mm": self.vl53l1x_mm,
                "pins": {str(k): v for k, v in self.pins.items()},
                "adc_uv": {str(k): v for k, v in self.adc_uv.items()}}


def make_rom(rom_dir: Path, *, hardware: Hardware | None = None,
             frozen: dict[str, bytes] | None = None) -> Path:
    """Write a rom directory; ``frozen`` maps module names ("us_node") to .mpy bytes."""
    rom_dir.mkdir(parents=True, exist_ok=True)
    (rom_dir / "_boot.py").write_text(BOOT, encoding="utf-8")
    spec = {"hardware": hardware.spec() if hardware else None, "frozen": bool(frozen)}
    (rom_dir / "rom.json").write_text(json.dumps(spec), encoding="utf-8")
    if hardware is not None:
        for src in FAKES:
            shutil.copy(src, rom_dir / src.name)
    if frozen:
        (rom_dir / "frozen").mkdir(exist_ok=True)
        for name, data in frozen.items():
            (rom_dir / "frozen" / f"{name}.mpy").write_bytes(data)
    return rom_dir


def nvs(rom_dir: Path) -> dict[str, dict[str, Any]]:
    """The NVS partition as the board committed it: {namespace: {key: bytes | int}}."""
    path = rom_dir / "nvs.json"
    if not path.exists():
        return {}
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {ns: {k: bytes.fromhex(v[1]) if v[0] == "b" else v[1] for k, v in d.items()}
            for ns, d in raw.items()}
