"""The gateway's fast paths give exactly what the plain code they replace gives."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from gateway import senml
from gateway.batcher import Batcher
from gateway.config import BatchConfig, HealthConfig
from gateway.health import Health
from gateway.metrics import Metrics
from gateway.outbox import Outbox
from gateway.protocol import NodeKeys
from gateway.registry import Node, Registry
from gateway.replay import ReplayTable
from gateway.senml import FrameRecord, encode_frame, frame_bytes, frame_records, join_frames
from gateway.verify import Heard, Verifier
from tests.test_gw_support import KEYS, frame

u32 = st.integers(0, 0xFFFFFFFF)
# Values past what a CBOR head holds too (a bignum-tagged body value passes verify as an int).
value = st.one_of(st.booleans(), st.integers(-(2**70), 2**70), st.integers(-30, 30))
readings = st.dictionaries(st.integers(-5, 40), value, max_size=24)
when = st.one_of(st.floats(0, 2e9), st.just(float("inf")), st.integers(0, 2**40))
frame_record = st.builds(FrameRecord, u32, u32, st.sampled_from([0, 1, 2]), readings, when,
                         st.one_of(st.none(), st.integers(-120, 20)))


@given(fr=frame_record)
def test_encode_frame_writes_the_bytes_cbor2_writes(fr: FrameRecord) -> None:
    records = frame_records(fr)
    whole = cbor2.dumps(records)
    data, n = encode_frame(fr)
    assert n == len(records)
    assert whole.endswith(data) and frame_bytes((data, n)) == len(whole)


@given(frs=st.lists(frame_record, max_size=40))
def test_join_frames_is_encode_pack(frs: list[FrameRecord]) -> None:
    packed = [encode_frame(fr) for fr in frs]
    assert join_frames([d for d, _ in packed], sum(n for _, n in packed)) == senml.encode_pack(frs)


@given(key=st.binary(min_size=16, max_size=16), direction=st.sampled_from([0, 1]), fcnt=u32,
       data=st.binary(max_size=80))
def test_precomputed_hmac_states_give_hmac_sha256(key: bytes, direction: int, fcnt: int,
                                                   data: bytes) -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    mic_key = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(b"\x02" + bytes(15))
    msg = bytes((0x49, direction)) + fcnt.to_bytes(4, "little") + data
    assert NodeKeys(key).mic(direction, fcnt, data) == hmac.digest(mic_key, msg, hashlib.sha256)[:4]


def test_a_better_rssi_merged_after_encoding_reaches_the_pack(tmp_path: Path) -> None:
    """The batcher encodes a frame when it arrives; a repeat heard louder must re-encode it."""
    reg = Registry([Node(1, "parking", NodeKeys(KEYS[1]))])
    m = Metrics()
    replay = ReplayTable()
    ob = Outbox(tmp_path / "o.db", 1 << 20, m, "normal")
    verifier = Verifier(reg, replay, m)
    b = Batcher(BatchConfig(), ob, reg, replay, Health(HealthConfig(), reg, lambda e: None), m)
    f = frame(1, 7)
    for rssi in (-80, -60, -70):
        v = verifier.process(Heard(f, "ble", rssi_dbm=rssi))
        assert v is not None
        b.add(v)
    b.flush()
    (batch,) = ob.peek(0, 10)
    ((node_id, fcnt, values),) = senml.frames_from_pack(batch.payload)
    assert (node_id, fcnt, values["rssi"]) == (1, 7, -90)
    ob.close()
