"""Long fuzz runs of every parser of outside bytes (``make soak``; excluded from the default run).

The default suite runs the same properties with a few hundred examples each; here they get
tens of thousands, so a rare crash path has a real chance to show.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.verify import Heard
from tests.test_gw_units import GOOD, _verifier
from urbansense.wire import framing
from urbansense.wire.errors import FrameError
from urbansense.wire.protocol import parse_header

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
LONG = settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@LONG
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_serial_byte_stream_never_raises(chunks: list[bytes]) -> None:
    v = _verifier()
    splitter = framing.PacketSplitter()
    for chunk in chunks:
        for packet in splitter.feed(chunk):
            v.process(Heard(packet, "serial", wrapped=True))


@LONG
@given(st.binary(min_size=len(GOOD), max_size=len(GOOD)), st.integers(0, len(GOOD)))
def test_mutated_frames_are_rejected_or_accepted_never_raise(noise: bytes, keep: int) -> None:
    # A valid frame with its tail replaced by noise: the MIC, the body, the counter all move.
    data = GOOD[:keep] + noise[keep:]
    v = _verifier()
    v.process(Heard(data, "ble"))
    v.process(Heard(framing.wrap(data), "serial", wrapped=True))


@LONG
@given(st.binary(max_size=64))
def test_header_parser_raises_only_frame_error(data: bytes) -> None:
    try:
        parse_header(data)
    except FrameError:
        pass
