"""The firmware codec on the real MicroPython VM (WebAssembly port) against the golden vectors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.mpvm import run_micropython
from urbansense.wire.protocol import NodeKeys, parse_header, verify_uplink

ROOT = Path(__file__).resolve().parents[1]
MOUNTS = {str(ROOT / "firmware" / "lib"): "/lib", str(ROOT / "tests" / "vectors"): "/vectors"}

VECTOR_SCRIPT = r"""
import sys, json, binascii
import us_proto, us_cobs, us_aes, us_crypto
print(sys.implementation.name)
def h(b):
    return binascii.hexlify(b).decode()
n = 0
for v in json.load(open("/vectors/uplink.json")):
    keys = us_proto.Keys(binascii.unhexlify(v["key"]))
    readings = {}
    for k, val in v["readings"]:
        readings[k] = val
    frame = us_proto.encode_uplink(keys, v["node_id"], v["fcnt"], v["ftype"], readings, us_proto.SERIAL_MAX_FRAME)
    assert h(frame) == v["frame"], v["name"]
    assert h(us_cobs.wrap(frame)) == v["serial"], v["name"]
    assert us_cobs.unwrap(us_cobs.wrap(frame)[:-1]) == frame
    n += 1
for v in json.load(open("/vectors/ack.json")):
    keys = us_proto.Keys(binascii.unhexlify(v["key"]))
    dcnt, acked, cmds = us_proto.decode_ack(keys, v["node_id"], binascii.unhexlify(v["frame"]))
    assert dcnt == v["dcnt"] and acked == v["acked_fcnt"], v["name"]
    want = None
    if v["commands"]:
        want = {}
        for k, val in v["commands"]:
            want[k] = val
    assert cmds == want, v["name"]
    bad = bytearray(binascii.unhexlify(v["frame"]))
    bad[-1] ^= 1
    try:
        us_proto.decode_ack(keys, v["node_id"], bytes(bad))
        raise AssertionError("tampered ack accepted")
    except ValueError:
        pass
    n += 1
for k, p, c in json.load(open("/vectors/aes.json")):
    assert h(us_aes.AES128(binascii.unhexlify(k)).encrypt(binascii.unhexlify(p))) == c
    n += 1
for d, e in json.load(open("/vectors/cobs.json")):
    assert h(us_cobs.cobs_encode(binascii.unhexlify(d))) == e
    assert h(us_cobs.cobs_decode(binascii.unhexlify(e))) == d
    n += 1
assert us_cobs.crc16(b"123456789") == 0x29B1
print("vectors", n)
"""


def test_firmware_codec_passes_golden_vectors_on_micropython() -> None:
    result = run_micropython(VECTOR_SCRIPT, mounts=MOUNTS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0] == "micropython"
    expected = sum(len(json.loads((ROOT / "tests" / "vectors" / f).read_text())) for f in ("uplink.json", "ack.json", "aes.json", "cobs.json"))
    assert result.stdout.strip().endswith(f"vectors {expected}")


def test_frame_encoded_on_micropython_verifies_on_the_gateway() -> None:
    key = bytes(range(100, 116))
    script = (
        "import us_proto, binascii\n"
        f"keys = us_proto.Keys(binascii.unhexlify('{key.hex()}'))\n"
        "for fcnt in (0, 1, 65535, 65536, 70000):\n"
        "    f = us_proto.encode_uplink(keys, 0xC0FFEE, fcnt, us_proto.T_REPORT,"
        " {us_proto.Q_VOLUME_L: 1000 + fcnt, us_proto.Q_ALARMS: us_proto.A_LEAK})\n"
        "    print(binascii.hexlify(f).decode())\n"
    )
    result = run_micropython(script, mounts=MOUNTS)
    assert result.returncode == 0, result.stderr
    frames = [bytes.fromhex(line) for line in result.stdout.split()]
    assert len(frames) == 5
    keys = NodeKeys(key)
    last: int | None = None
    for frame, fcnt in zip(frames, (0, 1, 65535, 65536, 70000), strict=True):
        up = verify_uplink(keys, frame, parse_header(frame), last)
        assert (up.node_id, up.fcnt, up.readings) == (0xC0FFEE, fcnt, {3: 1000 + fcnt, 4: 1})
        last = up.fcnt
