"""Every constant both the firmware and the CPython side know has the same name and value on
both sides, and docs/PROTOCOL.md's tables agree with them.

The firmware cannot import urbansense.wire (MicroPython, RAM), so the two are kept apart and
pinned here instead: a drift in an alarm bit would mislabel a fleet's alarms silently, and a
fleet is not re-flashed cheaply. The downlink command ranges are pinned by behaviour (what
``us_serial._command`` accepts) in tests/test_gw_robustness.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from simulator.firmware_loader import firmware_module
from urbansense.wire import node_config, protocol, quantities

ROOT = Path(__file__).resolve().parents[1]
us_config = firmware_module("us_config")
us_proto = firmware_module("us_proto")

PROTOCOL_MD = (ROOT / "docs" / "PROTOCOL.md").read_text()
# Constant families us_proto shares with urbansense.wire (name prefixes), and the single names.
_PREFIXES = ("T_", "DIR_", "Q_", "A_", "F_", "C_")
_SINGLES = ("VERSION", "UP_HDR_LEN", "DOWN_HDR_LEN", "MIC_LEN", "BLE_MAX_FRAME", "SERIAL_MAX_FRAME")


def _int_constants(module: object) -> dict[str, int]:
    return {name: value for name, value in vars(module).items()
            if name.isupper() and not name.startswith("_") and type(value) is int}


def _wire_shared() -> dict[str, int]:
    both = {**_int_constants(protocol), **_int_constants(quantities)}
    return {n: v for n, v in both.items() if n.startswith(_PREFIXES) or n in _SINGLES}


def test_every_us_proto_constant_is_in_urbansense_wire_under_the_same_name() -> None:
    firmware = _int_constants(us_proto)
    assert set(_SINGLES) <= set(firmware)
    assert firmware == _wire_shared()


def test_a_changed_firmware_constant_fails_the_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above is not vacuous: one alarm bit moved is a difference."""
    monkeypatch.setattr(us_proto, "A_TAMPER", 16)
    assert _int_constants(us_proto) != _wire_shared()


def test_the_wire_tables_are_built_from_the_shared_constants() -> None:
    assert set(protocol.TYPE_NAMES) == {v for n, v in _wire_shared().items() if n.startswith("T_")}
    assert set(protocol.UPLINK_TYPES) == set(protocol.TYPE_NAMES) - {protocol.T_ACK}
    for key, q in quantities.QUANTITIES.items():
        assert getattr(quantities, "Q_" + q.field.upper()) == key
    assert len(quantities.QUANTITIES) == sum(n.startswith("Q_") for n in _wire_shared())
    for bit, name in quantities.ALARM_NAMES.items():
        assert getattr(quantities, "A_" + name.upper()) == bit
    assert len(quantities.ALARM_NAMES) == sum(n.startswith("A_") for n in _wire_shared())
    for name, key in quantities.COMMANDS.items():
        assert getattr(quantities, "C_" + name.upper()) == key
    assert set(quantities.COMMANDS) == set(quantities.COMMAND_RANGES)
    assert len(quantities.COMMANDS) == sum(n.startswith("C_") for n in _wire_shared())


def test_config_vocabulary_is_the_firmware_checks() -> None:
    for name in ("KINDS", "TRANSPORTS", "SENSORS", "SECTIONS"):
        assert getattr(node_config, name) == getattr(us_config, name), name
    assert quantities.MAX_THRESHOLDS == us_config.MAX_THRESHOLDS


def test_command_ranges_are_the_config_json_bounds() -> None:
    """A command sets a config.json value: the gateway's range is the node's config bound."""
    bounds = {key: (lo, hi) for _section, key, lo, hi in us_config._INTS}
    checked = 0
    for name, rng in quantities.COMMAND_RANGES.items():
        if name in bounds:
            assert rng == bounds[name], name
            checked += 1
    assert checked == 4  # report_interval_s, heartbeat_s, burst_lph, mag_threshold_ut


# -- docs/PROTOCOL.md ---------------------------------------------------------------------


def test_protocol_md_frame_types_and_directions() -> None:
    rows = re.findall(r"^\| (\w+)\s*\| (\d+) \| (node -> gateway|gateway -> node) \|", PROTOCOL_MD, re.M)
    assert {name.lower(): int(code) for name, code, _ in rows} == {
        name: code for code, name in protocol.TYPE_NAMES.items()}
    for name, _code, direction in rows:
        assert (direction == "gateway -> node") == (getattr(protocol, "T_" + name) == protocol.T_ACK)
    m = re.search(r"`dir` is (\d) for uplink, (\d) for downlink", PROTOCOL_MD)
    assert m and (int(m[1]), int(m[2])) == (protocol.DIR_UP, protocol.DIR_DOWN)


def test_protocol_md_header_lengths_and_frame_limits() -> None:
    body = re.search(r"^(\d+)\s+n\s+body:", PROTOCOL_MD, re.M)
    commands = re.search(r"^(\d+)\s+n\s+commands:", PROTOCOL_MD, re.M)
    mics = re.findall(r"^\d+\+n\s+(\d+)\s+MIC", PROTOCOL_MD, re.M)
    assert body and int(body[1]) == protocol.UP_HDR_LEN
    assert commands and int(commands[1]) == protocol.DOWN_HDR_LEN
    assert mics and {int(n) for n in mics} == {protocol.MIC_LEN}
    m = re.search(r"Length: (\d+) bytes at least .*?, (\d+) at most over BLE .*?(\d+) at most over serial",
                  PROTOCOL_MD, re.S)
    assert m, "uplink length sentence missing from docs/PROTOCOL.md section 2"
    assert (int(m[1]), int(m[2]), int(m[3])) == (
        protocol.MIN_UPLINK_LEN, protocol.BLE_MAX_FRAME, protocol.SERIAL_MAX_FRAME)


def _bits(field: str) -> dict[str, int]:
    """The 'meaning' column of a bit-field quantity: '1 leak, 2 burst' -> {'LEAK': 1, ...}."""
    row = re.search(rf"^\| \d+ \| `{field}` \|.*\| bit field \| ([^|]+) \|$", PROTOCOL_MD, re.M)
    assert row, f"{field} row missing from docs/PROTOCOL.md section 3"
    text = re.sub(r"\(.*?\)", "", row[1])
    return {name.strip().upper().replace(" ", "_"): int(bit)
            for bit, name in re.findall(r"(\d+) ([a-z ]+)", text)}


def test_protocol_md_alarm_and_flag_bits() -> None:
    shared = _wire_shared()
    assert _bits("alarms") == {n[2:]: v for n, v in shared.items() if n.startswith("A_")}
    assert _bits("flags") == {n[2:]: v for n, v in shared.items() if n.startswith("F_")}


def test_protocol_md_command_table() -> None:
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| [^|]+ \| ([^|]+) \|$", PROTOCOL_MD, re.M)
    table = {name: (int(key), rng.strip()) for key, name, rng in rows}
    assert {name: key for name, (key, _) in table.items()} == quantities.COMMANDS
    for name, (lo, hi) in quantities.COMMAND_RANGES.items():
        text = table[name][1]
        if name == "thresholds":
            assert text == f"1..{quantities.MAX_THRESHOLDS} values, each {lo}..{hi}"
        elif text.startswith("uint32"):
            assert (lo, hi) == (0, 2**32 - 1), name
        else:
            assert text == f"{lo}..{hi}", name


def test_protocol_md_mic_formula_has_hexadecimal_bytes() -> None:
    """Section 2.4 read literally, with 49 as the byte 0x49, gives the golden vectors' MICs."""
    import hashlib
    import hmac
    import json

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    assert "`49` is the byte 0x49" in PROTOCOL_MD
    for vec in json.loads((ROOT / "tests" / "vectors" / "uplink.json").read_text()):
        root = Cipher(algorithms.AES(bytes.fromhex(vec["key"])), modes.ECB()).encryptor()
        k_mic = root.update(b"\x02" + bytes(15))
        frame = bytes.fromhex(vec["frame"])
        msg = bytes((0x49, protocol.DIR_UP)) + vec["fcnt"].to_bytes(4, "little") + frame[:-4]
        assert hmac.new(k_mic, msg, hashlib.sha256).digest()[:4] == frame[-4:], vec["name"]


def test_kinds_are_written_once_on_the_cpython_side() -> None:
    """Before: KINDS was defined four times (registry, demo, fieldkit, the firmware's own)."""
    import ast

    home = ROOT / "urbansense" / "wire" / "node_config.py"
    found = []
    for tree in ("gateway", "simulator", "urbansense", "collector"):
        for path in (ROOT / tree).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Tuple | ast.List) and len(node.elts) == len(node_config.KINDS):
                    try:
                        value = tuple(ast.literal_eval(node))
                    except ValueError:
                        continue
                    if value == node_config.KINDS and path != home:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
