# urbansense wire protocol v1, node side (docs/PROTOCOL.md is the spec).
#
# Uplink  : hdr(1) node_id(4 LE) fcnt16(2 LE) ciphertext(n) mic(4)
# Ack/down: hdr(1) node_id(4 LE) dcnt(4 LE) acked_fcnt(4 LE) ciphertext(n) mic(4)
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

import us_cbor
from us_crypto import ctr_xor, derive_keys, hmac_sha256

VERSION = const(1)
T_REPORT = const(0)
T_STATUS = const(1)
T_ALARM = const(2)
T_ACK = const(8)

DIR_UP = const(0)
DIR_DOWN = const(1)

UP_HDR_LEN = const(7)
DOWN_HDR_LEN = const(13)
MIC_LEN = const(4)
BLE_MAX_FRAME = const(27)
SERIAL_MAX_FRAME = const(64)

# Quantity registry: CBOR map keys of the body (docs/PROTOCOL.md, "Quantities").
Q_OCCUPIED = const(0)
Q_DISTANCE_MM = const(1)
Q_FILL_PCT = const(2)
Q_VOLUME_L = const(3)
Q_ALARMS = const(4)
Q_BATTERY_MV = const(5)
Q_TEMPERATURE_CC = const(6)
Q_ACK_RSSI_DBM = const(7)
Q_RESET_CAUSE = const(8)
Q_FW_VERSION = const(9)
Q_FLAGS = const(10)
Q_EVENTS = const(11)
Q_FLOW_LPH = const(12)
Q_DROPPED = const(13)
Q_DCNT = const(14)

# Q_ALARMS bits
A_LEAK = const(1)
A_BURST = const(2)
A_BACKFLOW = const(4)
A_TAMPER = const(8)

# Q_FLAGS bits
F_LOW_BATTERY = const(1)
F_SENSOR_FAULT = const(2)
F_CALIBRATING = const(4)

# Downlink command keys
C_REPORT_INTERVAL_S = const(1)
C_HEARTBEAT_S = const(2)
C_THRESHOLDS = const(3)
C_TIME_S = const(4)
C_BURST_LPH = const(5)
C_MAG_THRESHOLD_UT = const(6)


class Keys:
    """A node's derived keys; derive once per wake, not per frame."""

    def __init__(self, root_key):
        self.enc, self.mic = derive_keys(root_key)


def _mic(mic_key, direction, fcnt, frame_wo_mic):
    msg = bytearray(b"\x49")
    msg.append(direction)
    msg.extend(fcnt.to_bytes(4, "little"))
    msg.extend(frame_wo_mic)
    return hmac_sha256(mic_key, msg)[:MIC_LEN]


def encode_uplink(keys, node_id, fcnt, ftype, readings, max_len=BLE_MAX_FRAME):
    """readings: {quantity key: int or bool}. Returns the frame bytes."""
    body = us_cbor.encode(readings)
    frame = bytearray(UP_HDR_LEN + len(body) + MIC_LEN)
    if len(frame) > max_len:
        raise ValueError("frame too long")
    frame[0] = (VERSION << 4) | ftype
    frame[1:5] = node_id.to_bytes(4, "little")
    frame[5] = fcnt & 0xFF
    frame[6] = (fcnt >> 8) & 0xFF
    frame[UP_HDR_LEN:UP_HDR_LEN + len(body)] = ctr_xor(keys.enc, DIR_UP, node_id, fcnt, 0, body)
    end = len(frame) - MIC_LEN
    frame[end:] = _mic(keys.mic, DIR_UP, fcnt, memoryview(frame)[:end])
    return bytes(frame)


def encode_ack(keys, node_id, dcnt, acked_fcnt, commands=None):
    """Gateway -> node. Used by the gateway's reference encoder and by tests."""
    body = us_cbor.encode(commands) if commands else b""
    frame = bytearray(DOWN_HDR_LEN)
    frame[0] = (VERSION << 4) | T_ACK
    frame[1:5] = node_id.to_bytes(4, "little")
    frame[5:9] = dcnt.to_bytes(4, "little")
    frame[9:13] = acked_fcnt.to_bytes(4, "little")
    frame.extend(ctr_xor(keys.enc, DIR_DOWN, node_id, acked_fcnt, dcnt, body))
    frame.extend(_mic(keys.mic, DIR_DOWN, dcnt, frame))
    return bytes(frame)


def decode_ack(keys, node_id, frame):
    """-> (dcnt, acked_fcnt, commands dict or None); ValueError if not for us or forged."""
    if len(frame) < DOWN_HDR_LEN + MIC_LEN or frame[0] != (VERSION << 4) | T_ACK:
        raise ValueError("ack: not an ack")
    if int.from_bytes(frame[1:5], "little") != node_id:
        raise ValueError("ack: other node")
    dcnt = int.from_bytes(frame[5:9], "little")
    acked = int.from_bytes(frame[9:13], "little")
    end = len(frame) - MIC_LEN
    expect = _mic(keys.mic, DIR_DOWN, dcnt, frame[:end])
    diff = 0
    for i in range(MIC_LEN):
        diff |= expect[i] ^ frame[end + i]
    if diff:
        raise ValueError("ack: bad mic")
    commands = None
    if end > DOWN_HDR_LEN:
        commands = us_cbor.decode(ctr_xor(keys.enc, DIR_DOWN, node_id, acked, dcnt, frame[DOWN_HDR_LEN:end]))
        if not isinstance(commands, dict):
            raise ValueError("ack: body not a map")
    return dcnt, acked, commands
