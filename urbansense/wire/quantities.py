"""The quantity registry: body keys of protocol v1 and their SenML names and units; the alarm
and flag bits; the downlink command keys and the ranges a node accepts.

Written once here; the firmware (firmware/lib/us_proto.py) has the same constants under the
same names, and docs/PROTOCOL.md sections 3 and 5 the same tables: tests/test_wire_parity.py
pins the three together, so a drift cannot mislabel a fleet's alarms silently.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class Quantity(NamedTuple):
    key: int
    field: str  # name in firmware and in decoded readings, unit in the name
    senml_name: str  # short: it travels in every record (docs/PROTOCOL.md section 8)
    senml_unit: str | None  # recommended RFC 8428 section 12.1 units; None for counts/flags
    divisor: int = 1  # SenML value = (wire integer + offset) / divisor, exactly
    offset: int = 0
    boolean: bool = False

    def senml_value(self, raw: int) -> int | float:
        """The SenML value of a wire integer: an int when integral, else the nearest double.

        Python's int / int is correctly rounded, so 3659 / 1000 is the double nearest 3.659
        (3659 * 0.001 is not: 3.6590000000000003)."""
        n = int(raw) + self.offset
        return n // self.divisor if n % self.divisor == 0 else n / self.divisor


# Body keys: Q_ + the field name in capitals, as in the firmware.
Q_OCCUPIED: Final = 0
Q_DISTANCE_MM: Final = 1
Q_FILL_PCT: Final = 2
Q_VOLUME_L: Final = 3
Q_ALARMS: Final = 4
Q_BATTERY_MV: Final = 5
Q_TEMPERATURE_CC: Final = 6
Q_ACK_RSSI_DBM: Final = 7
Q_RESET_CAUSE: Final = 8
Q_FW_VERSION: Final = 9
Q_FLAGS: Final = 10
Q_EVENTS: Final = 11
Q_FLOW_LPH: Final = 12
Q_DROPPED: Final = 13
Q_DCNT: Final = 14

QUANTITIES: Final[dict[int, Quantity]] = {
    q.key: q
    for q in (
        Quantity(Q_OCCUPIED, "occupied", "occ", None, boolean=True),
        Quantity(Q_DISTANCE_MM, "distance_mm", "dist", "m", 1000),
        Quantity(Q_FILL_PCT, "fill_pct", "fill", "/", 100),  # "%" is the ratio too, not percent
        Quantity(Q_VOLUME_L, "volume_l", "vol", "m3", 1000),
        Quantity(Q_ALARMS, "alarms", "alm", None),
        Quantity(Q_BATTERY_MV, "battery_mv", "bat", "V", 1000),
        Quantity(Q_TEMPERATURE_CC, "temperature_cC", "temp", "Cel", 100),
        Quantity(Q_ACK_RSSI_DBM, "ack_rssi_dbm", "arssi", "dBW", offset=-30),
        Quantity(Q_RESET_CAUSE, "reset_cause", "rst", None),
        Quantity(Q_FW_VERSION, "fw_version", "fw", None),
        Quantity(Q_FLAGS, "flags", "flags", None),
        Quantity(Q_EVENTS, "events", "ev", None),
        Quantity(Q_FLOW_LPH, "flow_lph", "flow", "m3/s", 3_600_000),  # "l/s" is NOT RECOMMENDED
        Quantity(Q_DROPPED, "dropped", "drop", None),
        Quantity(Q_DCNT, "dcnt", "dcnt", None),
    )
}
BY_FIELD: Final[dict[str, Quantity]] = {q.field: q for q in QUANTITIES.values()}

# Q_ALARMS bits
A_LEAK: Final = 1
A_BURST: Final = 2
A_BACKFLOW: Final = 4
A_TAMPER: Final = 8
ALARM_NAMES: Final[dict[int, str]] = {
    A_LEAK: "leak",
    A_BURST: "burst",
    A_BACKFLOW: "backflow",
    A_TAMPER: "tamper",
}

# Q_FLAGS bits
F_LOW_BATTERY: Final = 1
F_SENSOR_FAULT: Final = 2
F_CALIBRATING: Final = 4

# Downlink command keys
C_REPORT_INTERVAL_S: Final = 1
C_HEARTBEAT_S: Final = 2
C_THRESHOLDS: Final = 3
C_TIME_S: Final = 4
C_BURST_LPH: Final = 5
C_MAG_THRESHOLD_UT: Final = 6
MAX_THRESHOLDS: Final = 8  # values in one thresholds command (us_config.MAX_THRESHOLDS)
# What a node accepts (firmware/lib/us_serial.py ``_command``; docs/PROTOCOL.md section 5): a
# gateway refuses anything else rather than report "sent" for a command the node ignores.
# time_s has no node-side use yet and takes any uint32.
COMMAND_RANGES: Final[dict[str, tuple[int, int]]] = {
    "report_interval_s": (60, 86400),
    "heartbeat_s": (60, 86400),
    "thresholds": (1, 100),  # each of 1..MAX_THRESHOLDS values
    "time_s": (0, 2**32 - 1),
    "burst_lph": (1, 100000),
    "mag_threshold_ut": (2, 400),
}
COMMANDS: Final[dict[str, int]] = {
    "report_interval_s": C_REPORT_INTERVAL_S,
    "heartbeat_s": C_HEARTBEAT_S,
    "thresholds": C_THRESHOLDS,
    "time_s": C_TIME_S,
    "burst_lph": C_BURST_LPH,
    "mag_threshold_ut": C_MAG_THRESHOLD_UT,
}
