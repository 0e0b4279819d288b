"""Regenerate tests/vectors/*.json from the firmware codec (the reference encoder).

Run: .venv/bin/python tools/make_vectors.py. The output is committed; both the firmware
(CPython and the MicroPython VM) and the gateway are tested against the committed files,
so a change to the wire format shows up as a diff here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the project, not firmware/lib
    sys.path.insert(0, str(ROOT))

from simulator.firmware_loader import firmware_module  # noqa: E402

us_aes = firmware_module("us_aes")
us_cobs = firmware_module("us_cobs")
P = firmware_module("us_proto")

OUT = ROOT / "tests" / "vectors"
KEY_A = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")  # FIPS-197 / SP 800-38A example key
KEY_B = bytes(range(16))


def uplink(name, key, node_id, fcnt, ftype, readings, meaning, last_fcnt=None, max_len=P.BLE_MAX_FRAME):
    frame = P.encode_uplink(P.Keys(key), node_id, fcnt, ftype, readings, max_len)
    return {
        "name": name,
        "key": key.hex(),
        "node_id": node_id,
        "fcnt": fcnt,
        "last_fcnt": last_fcnt,
        "ftype": ftype,
        "readings": [[k, readings[k]] for k in sorted(readings)],
        "meaning": meaning,
        "frame": frame.hex(),
        "length": len(frame),
        "serial": us_cobs.wrap(frame).hex(),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    up = [
        uplink("parking_arrival", KEY_A, 0x00A1B2C3, 41, P.T_REPORT, {P.Q_OCCUPIED: True, P.Q_EVENTS: 1},
               "parking space became occupied; 1 state change since last report"),
        uplink("parking_heartbeat", KEY_A, 0x00A1B2C3, 42, P.T_REPORT,
               {P.Q_OCCUPIED: False, P.Q_BATTERY_MV: 3641, P.Q_EVENTS: 0},
               "hourly heartbeat: free, 3.641 V"),
        uplink("bin_report", KEY_B, 0x0B000001, 7, P.T_REPORT,
               {P.Q_DISTANCE_MM: 412, P.Q_FILL_PCT: 63, P.Q_BATTERY_MV: 3590, P.Q_TEMPERATURE_CC: -512},
               "bin 63 % full, 412 mm to the surface, -5.12 C"),
        uplink("water_hourly", KEY_B, 0x0C0000FF, 1000, P.T_REPORT,
               {P.Q_VOLUME_L: 1234567, P.Q_ALARMS: 0, P.Q_FLOW_LPH: 36},
               "water index 1234.567 m3, no alarm, 36 l/h in the last hour"),
        uplink("water_leak_alarm", KEY_B, 0x0C0000FF, 1001, P.T_ALARM,
               {P.Q_VOLUME_L: 4294967295, P.Q_ALARMS: P.A_LEAK | P.A_TAMPER},
               "leak + tamper alarm at the largest 32-bit index"),
        uplink("status_boot", KEY_A, 0xFFFFFFFE, 0, P.T_STATUS,
               {P.Q_BATTERY_MV: 3600, P.Q_TEMPERATURE_CC: 2150, P.Q_RESET_CAUSE: 1, P.Q_FW_VERSION: 10203},
               "status after power-on: 3.6 V, 21.5 C, reset cause 1, firmware 1.2.3"),
        uplink("status_serial_all_diag", KEY_A, 0x00A1B2C3, 43, P.T_STATUS,
               {P.Q_BATTERY_MV: 3300, P.Q_TEMPERATURE_CC: 100, P.Q_ACK_RSSI_DBM: -87, P.Q_RESET_CAUSE: 4,
                P.Q_FW_VERSION: 10000, P.Q_FLAGS: P.F_LOW_BATTERY, P.Q_DROPPED: 3},
               "serial status with every diagnostic quantity", max_len=P.SERIAL_MAX_FRAME),
        uplink("counter_wrap_ffff", KEY_A, 0x00000001, 0xFFFF, P.T_REPORT, {P.Q_OCCUPIED: True},
               "last counter before the on-air bits wrap", last_fcnt=0xFFF0),
        uplink("counter_wrap_10000", KEY_A, 0x00000001, 0x10000, P.T_REPORT, {P.Q_OCCUPIED: False},
               "first counter after the wrap: on air 0000, reconstructed 0x10000", last_fcnt=0xFFFF),
        uplink("counter_rollovers_ahead", KEY_A, 0x00000001, 0x30005, P.T_REPORT, {P.Q_OCCUPIED: True},
               "node unheard for two full wraps: found by the rollover search", last_fcnt=0x10000),
        uplink("counter_max", KEY_A, 0x00000001, 0xFFFFFFFF, P.T_REPORT, {P.Q_OCCUPIED: True},
               "largest 32-bit counter", last_fcnt=0xFFFFFFF0),
        uplink("ble_max_body", KEY_B, 0x12345678, 5, P.T_REPORT,
               {P.Q_VOLUME_L: 4000000000, P.Q_FLOW_LPH: 65535, P.Q_ALARMS: 15, P.Q_EVENTS: 24},
               "a 27-byte frame: the BLE limit without the Flags AD"),
        uplink("serial_max_body", KEY_B, 0x12345678, 6, P.T_STATUS,
               {P.Q_OCCUPIED: True, P.Q_DISTANCE_MM: 1200, P.Q_FILL_PCT: 40, P.Q_VOLUME_L: 123456,
                P.Q_ALARMS: 0, P.Q_BATTERY_MV: 3600, P.Q_TEMPERATURE_CC: -4000, P.Q_ACK_RSSI_DBM: -120,
                P.Q_RESET_CAUSE: 5, P.Q_FW_VERSION: 10203, P.Q_FLAGS: 0, P.Q_EVENTS: 3,
                P.Q_FLOW_LPH: 100, P.Q_DROPPED: 0},
               "every quantity at once: serial only", max_len=P.SERIAL_MAX_FRAME),
        uplink("unknown_quantity_key", KEY_B, 0x12345678, 7, P.T_REPORT, {P.Q_OCCUPIED: True, 23: 5},
               "a quantity key this version does not know: forwarded as q23"),
    ]
    assert up[11]["length"] == 27, up[11]["length"]
    acks = []
    for name, key, nid, dcnt, acked, cmds, meaning in [
        ("ack_plain", KEY_A, 0x00A1B2C3, 1, 42, None, "acknowledges frame 42, no command"),
        ("ack_with_commands", KEY_A, 0x00A1B2C3, 2, 43, {1: 900, 3: [50, 75, 90], 4: 1795000000},
         "ack + report every 900 s, thresholds 50/75/90 %, time"),
        ("ack_big_counters", KEY_B, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, {2: 3600},
         "largest counters both ways"),
    ]:
        frame = P.encode_ack(P.Keys(key), nid, dcnt, acked, cmds)
        acks.append({
            "name": name, "key": key.hex(), "node_id": nid, "dcnt": dcnt, "acked_fcnt": acked,
            "commands": [[k, cmds[k]] for k in sorted(cmds)] if cmds else None,
            "meaning": meaning, "frame": frame.hex(), "serial": us_cobs.wrap(frame).hex(),
        })
    aes = [  # FIPS-197 appendix C.1 and SP 800-38A F.1.1 (ECB-AES128)
        ["000102030405060708090a0b0c0d0e0f", "00112233445566778899aabbccddeeff", "69c4e0d86a7b0430d8cdb78070b4c55a"],
        ["2b7e151628aed2a6abf7158809cf4f3c", "6bc1bee22e409f96e93d7e117393172a", "3ad77bb40d7a3660a89ecaf32466ef97"],
        ["2b7e151628aed2a6abf7158809cf4f3c", "ae2d8a571e03ac9c9eb76fac45af8e51", "f5d3d58503b9699de785895a96fdbaaf"],
        ["2b7e151628aed2a6abf7158809cf4f3c", "30c81c46a35ce411e5fbc1191a0a52ef", "43b1cd7f598ece23881b00e3ed030688"],
        ["2b7e151628aed2a6abf7158809cf4f3c", "f69f2445df4f9b17ad2b417be66c3710", "7b0c785e27e8ad3f8223207104725dd4"],
    ]
    for k, p, c in aes:
        assert us_aes.AES128(bytes.fromhex(k)).encrypt(bytes.fromhex(p)).hex() == c
    cobs = [[d, us_cobs.cobs_encode(bytes.fromhex(d)).hex()] for d in
            ["", "00", "0000", "11220033", "11223344", "1100", ("01" * 254), ("01" * 255), ("01" * 253) + "00"]]
    cobs.append(["313233343536373839", "CRC-16/CCITT-FALSE check value 29b1"])
    for fname, data in (("uplink.json", up), ("ack.json", acks), ("aes.json", aes), ("cobs.json", cobs[:-1])):
        (OUT / fname).write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(up)} uplink, {len(acks)} ack, {len(aes)} aes, {len(cobs) - 1} cobs vectors to {OUT}")


if __name__ == "__main__":
    main()
