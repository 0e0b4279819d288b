"""Durations on the command line (README: "Durations take suffixes: 90s, 15m, 2h, 1d")."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from urbansense.durations import duration_arg, parse_duration_s

_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def test_durations_take_suffixes() -> None:
    assert [parse_duration_s(t) for t in ("90s", "15m", "2h", "1d", "45", "250ms", " 1.5h ")] == [
        90, 900, 7200, 86400, 45, 0.25, 5400]


@given(n=st.integers(0, 10**6), unit=st.sampled_from(sorted(_SECONDS)))
def test_every_suffix_scales_its_number(n: int, unit: str) -> None:
    assert parse_duration_s(f"{n}{unit}") == pytest.approx(n * _SECONDS[unit])


@pytest.mark.parametrize("text", ["", "s", "-5s", "1w", "2 hours", "1h30m", "1e3s"])
def test_anything_else_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration") as ei:
        parse_duration_s(text)
    assert repr(text) in str(ei.value)
    with pytest.raises(argparse.ArgumentTypeError):
        duration_arg(text)
