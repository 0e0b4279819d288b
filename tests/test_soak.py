"""Long fuzz runs of every parser of outside bytes (``make soak``; excluded from the default run).

The default suite runs the same properties with a few hundred examples each; here they get
tens of thousands, so a rare crash path has a real chance to show.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.flow import Heard
from gateway.metrics import REJECT_REASONS
from tests.test_gw_units import (
    GOOD,
    _capture,
    _verifier,
)
from tests.test_gw_units import (
    test_arbitrary_serial_bytes_are_rejected_and_counted_and_a_good_frame_still_lands as _serial_property,
)
from urbansense.wire import framing
from urbansense.wire.errors import FrameError
from urbansense.wire.protocol import parse_header

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
LONG = settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@LONG
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_serial_byte_stream_never_raises(chunks: list[bytes]) -> None:
    _serial_property.hypothesis.inner_test(chunks)  # the default run's property, 20,000 examples


@LONG
@given(st.binary(min_size=len(GOOD), max_size=len(GOOD)), st.integers(0, len(GOOD)))
def test_mutated_frames_are_rejected_or_accepted_never_raise(noise: bytes, keep: int) -> None:
    # A valid frame with its tail replaced by noise: the MIC, the body, the counter all move.
    data = GOOD[:keep] + noise[keep:]
    v = _verifier()
    with _capture("gateway.verify") as records:
        verdicts = [v.process(Heard(data, "ble")), v.process(Heard(framing.wrap(data), "serial", wrapped=True))]
    assert not [r for r in records if "verify_bug" in r.getMessage()]  # verify catches bugs: look
    assert v.metrics.rejections.total() == verdicts.count(None)
    assert {r for r, n in v.metrics.rejections.values.items() if n} <= set(REJECT_REASONS)


@LONG
@given(st.binary(max_size=64))
def test_header_parser_raises_only_frame_error(data: bytes) -> None:
    try:
        parse_header(data)
    except FrameError:
        pass
