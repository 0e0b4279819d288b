"""Durations on the command line: ``90s``, ``15m``, ``2h``, ``1d`` (a bare number is seconds)."""

from __future__ import annotations

import argparse
import re

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration_s(text: str) -> float:
    """Return seconds; raise ValueError naming the input when it is not a duration."""
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 1d)")
    return float(match.group(1)) * _UNITS_S[match.group(2) or "s"]


def duration_arg(text: str) -> float:
    """argparse ``type=`` adapter."""
    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
