"""Energy: board power profiles (boards/*.json), per-node charge accounting, battery life.

Charge is kept in microcoulombs (uA x s), split by the state that drew it, so a summary can
say where a node's battery goes (boot, CPU, sensor, radio, deep sleep).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from urbansense.compat import DATACLASS_SLOTS

HOURS_PER_YEAR: Final = 8766.0
ROOT: Final = Path(__file__).resolve().parents[1]
BOARDS_DIR: Final = ROOT / "boards"

# Bringing NimBLE up (ble.active(True)) at CPU current, when neither the board file nor
# anything else gives "ble_init_ms".
BLE_INIT_MS_DEFAULT: Final = 200.0

# Used only when boards/ has no file for the board a scenario names; every figure cites its
# primary source (as boards/city-wroom32e.json does) so the fallback is as checkable as a board file.
FALLBACK_PROFILE: Final[dict[str, dict[str, Any]]] = {
    "deep_sleep_ua": {
        "value": 5.0,
        "unit": "uA",
        "source": "ESP32 datasheet, 'Power Consumption by Power Modes': deep sleep with RTC timer + RTC memory; ~5 uA typical for a bare module (UNVERIFIED)",
    },
    "active_ma": {
        "value": 25.0,
        "unit": "mA",
        "source": "ESP32 datasheet, 'Power Consumption by Power Modes': 20-31 mA CPU at 80 MHz, radio off",
    },
    "ble_tx_ma": {
        "value": 130.0,
        "unit": "mA",
        "source": "ESP32 datasheet, 'Power Consumption by Power Modes': BLE TX at 0 dBm ~130 mA",
    },
    "boot_ms": {
        "value": 70.0,
        "unit": "ms",
        "source": "https://github.com/glenn20/upy-esp32-experiments/tree/main/OptimisingMicropythonBootTime (ESP32: 70 ms / 3.32 mC)",
    },
    "boot_mc": {
        "value": 3.3,
        "unit": "mC",
        "source": "https://github.com/glenn20/upy-esp32-experiments/tree/main/OptimisingMicropythonBootTime (ESP32: 70 ms / 3.32 mC)",
    },
    "ble_init_ms": {
        "value": BLE_INIT_MS_DEFAULT,
        "unit": "ms",
        "source": "micropython/micropython#5489: BLE().active(True) 'normally take[s] around 200ms'"
                  " on an ESP32 (NimBLE); UNVERIFIED on current builds",
    },
}

# Pins of the fallback board: RTC-capable wake pins (4, 25, 26) (ESP32 datasheet, "RTC GPIO"
# list); the UART on GPIO17/16 as on boards/city-wroom32e.json (never the flash's GPIO9/10).
FALLBACK_PINS: Final = {"i2c_scl": 22, "i2c_sda": 21, "mag_int": 4, "battery_adc": 35, "pulse": 25,
                        "tamper": 26, "us_trig": 18, "us_echo": 19, "uart_tx": 17, "uart_rx": 16}

_UNIT_TO_BASE: Final = {
    # unit -> (kind, factor): currents to uA, times to ms, charges to uC
    "ua": ("current", 1.0),
    "µa": ("current", 1.0),
    "ma": ("current", 1000.0),
    "a": ("current", 1e6),
    "na": ("current", 1e-3),
    "ms": ("time", 1.0),
    "s": ("time", 1000.0),
    "us": ("time", 1e-3),
    "mc": ("charge", 1000.0),
    "uc": ("charge", 1.0),
    "c": ("charge", 1e6),
}
# Draws of parts that are on only in some states (charged with that state), not always on.
_DEVICE_PREFIXES: Final = ("lis3mdl_", "vl53l1x_", "jsnsr04t_", "chip_", "ble_", "uart_")


@dataclass(frozen=True, **DATACLASS_SLOTS)
class PowerProfile:
    """A board's power figures in base units: currents uA, times ms, charges uC."""

    board: str
    deep_sleep_ua: float
    active_ua: float
    ble_tx_ua: float
    boot_ms: float
    boot_uc: float
    extra_ua: dict[str, float] = field(default_factory=dict)  # other currents by name
    sources: dict[str, str] = field(default_factory=dict)
    fallback: bool = False
    static_ua: float = 0.0  # always-on board draws (regulator Iq, battery divider)
    extra_ms: dict[str, float] = field(default_factory=dict)  # other times by name (ble_init_ms)

    def current_ua(self, name: str, default_ua: float) -> float:
        return self.extra_ua.get(name, default_ua)

    def time_ms(self, name: str, default_ms: float) -> float:
        return self.extra_ms.get(name, default_ms)

    @property
    def ble_init_ms(self) -> float:
        return self.time_ms("ble_init_ms", BLE_INIT_MS_DEFAULT)

    @property
    def uart_ua(self) -> float:
        """Awake with the UART sending or waiting for an ack: the CPU, plus a line driver
        (RS-485 transceiver, level shifter) if the board file names one ("uart_ua"/"uart_ma")."""
        return self.active_ua + self.extra_ua.get("uart_ua", self.extra_ua.get("uart_ma", 0.0))


def _figure(entry: Any) -> tuple[float, str, str]:
    if isinstance(entry, dict):
        return float(entry["value"]), str(entry.get("unit", "")), str(entry.get("source", ""))
    return float(entry), "", ""


def _to_base(name: str, entry: Any) -> tuple[float, str, str]:
    """-> (value in base units, kind: current/time/charge, source)."""
    value, unit, source = _figure(entry)
    if not unit:  # unit implied by the key's suffix (units in names)
        unit = name.rsplit("_", 1)[-1]
    conv = _UNIT_TO_BASE.get(unit.lower())
    if conv is None:
        raise ValueError(f"power figure {name}: unknown unit {unit!r}")
    kind, factor = conv
    return value * factor, kind, source


def profile_from_power(board: str, power: dict[str, Any], *, fallback: bool = False) -> PowerProfile:
    merged: dict[str, Any] = dict(FALLBACK_PROFILE)
    merged.update(power)
    base: dict[str, float] = {}
    kinds: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name, entry in merged.items():
        try:
            base[name], kinds[name], sources[name] = _to_base(name, entry)
        except (ValueError, KeyError, TypeError):
            continue
    core = {"deep_sleep_ua", "active_ma", "ble_tx_ma", "boot_ms", "boot_mc"}
    extra = {k: v for k, v in base.items() if k not in core and kinds[k] == "current"}
    times = {k: v for k, v in base.items() if k not in core and kinds[k] == "time"}
    static = sum(v for k, v in extra.items() if k.endswith("_ua") and not k.startswith(_DEVICE_PREFIXES))
    return PowerProfile(
        board=board,
        static_ua=static,
        deep_sleep_ua=base["deep_sleep_ua"],
        active_ua=base["active_ma"],
        ble_tx_ua=base["ble_tx_ma"],
        boot_ms=base["boot_ms"],
        boot_uc=base["boot_mc"],
        extra_ua=extra,
        extra_ms=times,
        sources=sources,
        fallback=fallback,
    )


def load_board(name: str, boards_dir: Path = BOARDS_DIR, image: str | None = None
               ) -> tuple[dict[str, Any], PowerProfile]:
    """-> (board json as the firmware reads it, power profile). Falls back when absent.

    ``image``: a MicroPython image other than the one the board's ``power`` table assumes,
    e.g. "stock": its figures (``power_images.stock`` in the board file: boot time and
    charge of the stock image) replace the board's."""
    path = boards_dir / f"{name}.json"
    if path.is_file():
        data: dict[str, Any] = json.loads(path.read_text())
        power = dict(data.get("power", {}))
        if image is not None:
            images = data.get("power_images", {})
            if image not in images:
                raise ValueError(f"board {name} has no power figures for image {image!r} "
                                 f"(has: {', '.join(images) or 'none'})")
            power.update(images[image])
        return data, profile_from_power(name, power)
    data = {"name": name, "chip": "ESP32", "pins": dict(FALLBACK_PINS), "power": FALLBACK_PROFILE,
            "battery_divider": {"r_top_ohm": 1_000_000, "r_bottom_ohm": 1_000_000}}
    return data, profile_from_power(name, {}, fallback=True)


def boot_only_life_years(profile: PowerProfile, cell: Cell, wakes_per_day: float) -> float:
    """Battery life of a node that only wakes and sleeps again (deep sleep, the board's static
    draw, one boot per wake): the ceiling any firmware on this image gets at that wake rate."""
    avg_ua = profile.deep_sleep_ua + profile.static_ua + profile.boot_uc * wakes_per_day / 86400.0
    return cell.life_years(avg_ua)


@dataclass(frozen=True, **DATACLASS_SLOTS)
class Cell:
    """A primary cell. Figures from the manufacturers' datasheets (check there)."""

    name: str = "Li-SOCl2 D 3.6 V 19 Ah"
    nominal_ah: float = 19.0
    # Usable share at a few-uA-to-mA pulsed load over a decade at 20 C: Tadiran TL-5930 /
    # Saft LS 33600 datasheets rate the D cell at 2-3 mA continuous to 2.0 V; passivation,
    # cold and the 130 mA radio pulses cost some of it. 85 % is our derating, not a datasheet figure.
    usable_fraction: float = 0.85
    self_discharge_per_year: float = 0.01  # "about 1 %/year at 20 C" (Li-SOCl2 datasheets)
    nominal_v: float = 3.6
    # Rated shelf life: no projection beyond it is shown (a 43-year figure means nothing for a
    # cell rated for about 20). No datasheet found gives a shelf life in years for the
    # modelled 19 Ah D cell (Tadiran TL-5930, or Saft LS 33600 at 17 Ah): Saft's LS-series
    # datasheets ("Benefits") give a self-discharge under 1 % after a year at +20 C, Varta
    # Microbattery's Li/SOCl2 handbook (section 1, "Advantages") shelf and operational life
    # "up to 15 years and more", Tadiran's own articles on bobbin cells "up to 40 years".
    # 20 years is issue 12's figure, inside that range, not a datasheet value: check the
    # datasheet of the cell actually bought before relying on the cap.
    shelf_life_years: float = 20.0

    def uncapped_life_years(self, average_ua: float) -> float:
        """The charge arithmetic alone: usable charge / (load + self-discharge) per year."""
        usable_uah = self.nominal_ah * 1e6 * self.usable_fraction
        per_year_uah = average_ua * HOURS_PER_YEAR + self.nominal_ah * 1e6 * self.self_discharge_per_year
        return usable_uah / per_year_uah

    def life_years(self, average_ua: float) -> float:
        """Projected life, capped at the cell's rated shelf life (``capped`` tells when)."""
        return min(self.uncapped_life_years(average_ua), self.shelf_life_years)

    def capped(self, average_ua: float) -> bool:
        return self.uncapped_life_years(average_ua) > self.shelf_life_years

    def voltage_mv(self, used_fraction: float) -> int:
        # Li-SOCl2 is flat at ~3.6 V under light load and falls off at the end of life.
        u = min(max(used_fraction, 0.0), 1.0)
        return int(3650 - 250 * u**6 - 900 * max(0.0, u - 0.95) / 0.05)


CELLS: Final[dict[str, Cell]] = {
    "lisocl2_d_19ah": Cell(),
    "lisocl2_aa_x2": Cell(
        name="2 x Li-SOCl2 AA 3.6 V 2.6 Ah in parallel",
        nominal_ah=5.2,
        usable_fraction=0.85,
    ),
}

# States the firmware may declare through hal.energy(); each adds to the CPU current.
CATEGORIES: Final = ("boot", "cpu", "sensor", "ble_tx", "uart", "sleep", "sleep_sensor")


class Meter:
    """Charge drawn by one node, by category, in uC."""

    __slots__ = ("uc",)

    def __init__(self) -> None:
        self.uc: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)

    def add(self, category: str, uc: float) -> None:
        self.uc[category] = self.uc.get(category, 0.0) + uc

    def total_uc(self) -> float:
        return sum(self.uc.values())

    def average_ua(self, elapsed_s: float) -> float:
        return self.total_uc() / elapsed_s if elapsed_s > 0 else 0.0
