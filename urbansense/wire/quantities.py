"""The quantity registry: body keys of protocol v1 and their SenML names and units.

Written once here; docs/PROTOCOL.md lists the same table and tests pin the two together.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class Quantity(NamedTuple):
    key: int
    field: str  # name in firmware and in decoded readings, unit in the name
    senml_name: str
    senml_unit: str | None  # RFC 8428 section 12.1 units; None for counts/flags
    scale: float  # SenML value = wire integer * scale (+ offset)
    offset: float = 0.0
    boolean: bool = False


QUANTITIES: Final[dict[int, Quantity]] = {
    q.key: q
    for q in (
        Quantity(0, "occupied", "occupied", None, 1.0, boolean=True),
        Quantity(1, "distance_mm", "distance", "m", 0.001),
        Quantity(2, "fill_pct", "fill", "%", 1.0),
        Quantity(3, "volume_l", "volume", "m3", 0.001),
        Quantity(4, "alarms", "alarms", None, 1.0),
        Quantity(5, "battery_mv", "battery", "V", 0.001),
        Quantity(6, "temperature_cC", "temperature", "Cel", 0.01),
        Quantity(7, "ack_rssi_dbm", "ack_rssi", "dBW", 1.0, offset=-30.0),
        Quantity(8, "reset_cause", "reset_cause", None, 1.0),
        Quantity(9, "fw_version", "fw_version", None, 1.0),
        Quantity(10, "flags", "flags", None, 1.0),
        Quantity(11, "events", "events", "count", 1.0),
        Quantity(12, "flow_lph", "flow", "l/s", 1.0 / 3600.0),
        Quantity(13, "dropped", "dropped", "count", 1.0),
    )
}
BY_FIELD: Final[dict[str, Quantity]] = {q.field: q for q in QUANTITIES.values()}

# Q_ALARMS bits
ALARM_LEAK: Final = 1
ALARM_BURST: Final = 2
ALARM_BACKFLOW: Final = 4
ALARM_TAMPER: Final = 8
ALARM_NAMES: Final[dict[int, str]] = {
    ALARM_LEAK: "leak",
    ALARM_BURST: "burst",
    ALARM_BACKFLOW: "backflow",
    ALARM_TAMPER: "tamper",
}

# Q_FLAGS bits
FLAG_LOW_BATTERY: Final = 1
FLAG_SENSOR_FAULT: Final = 2
FLAG_CALIBRATING: Final = 4

# Downlink command keys
CMD_REPORT_INTERVAL_S: Final = 1
CMD_HEARTBEAT_S: Final = 2
CMD_THRESHOLDS: Final = 3
CMD_TIME_S: Final = 4
CMD_BURST_LPH: Final = 5
CMD_MAG_THRESHOLD_UT: Final = 6
# What a node accepts (firmware/lib/us_serial.py ``_command``; docs/PROTOCOL.md section 5): a
# gateway refuses anything else rather than report "sent" for a command the node ignores.
# time_s has no node-side use yet and takes any uint32.
COMMAND_RANGES: Final[dict[str, tuple[int, int]]] = {
    "report_interval_s": (60, 86400),
    "heartbeat_s": (60, 86400),
    "thresholds": (1, 100),  # each of at most 8 values
    "time_s": (0, 2**32 - 1),
    "burst_lph": (1, 100000),
    "mag_threshold_ut": (2, 400),
}
COMMANDS: Final[dict[str, int]] = {
    "report_interval_s": CMD_REPORT_INTERVAL_S,
    "heartbeat_s": CMD_HEARTBEAT_S,
    "thresholds": CMD_THRESHOLDS,
    "time_s": CMD_TIME_S,
    "burst_lph": CMD_BURST_LPH,
    "mag_threshold_ut": CMD_MAG_THRESHOLD_UT,
}
