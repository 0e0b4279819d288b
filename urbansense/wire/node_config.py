"""The vocabulary of a node's config.json that the CPython side writes (provisioning, the
simulator) and the firmware checks (firmware/lib/us_config.py, which has the same tuples
under the same names; tests/test_wire_parity.py pins them).
"""

from __future__ import annotations

from typing import Final

KINDS: Final = ("parking", "bin", "water")
TRANSPORTS: Final = ("ble", "serial")
SENSORS: Final = ("vl53l1x", "jsnsr04t")  # a bin's distance sensor
SECTIONS: Final = ("intervals", "thresholds", "calibration", "ble", "serial")
