"""Time of day and the random draws that every model of the street shares.

The models (simulator.parking, simulator.bins, simulator.water) each draw their future lazily,
a day at a time, from the node's own world stream, so a node's world does not depend on how
many other nodes exist or which process runs it. Sensor noise comes from a second stream (the
node's hardware stream in the simulator): how often the firmware samples must not change what
happens in the street.
Times are simulated seconds from the start of the run; ``t_day0`` is the wall-clock hour of
t = 0 expressed in seconds (profiles follow the time of day).

Contract: ``gauss`` and ``gauss3`` are CPython's ``Random.gauss`` bit for bit (same stream,
same spare left in ``gauss_next``), so inlining them changed no seed's result; ``nhpp`` draws
an inhomogeneous Poisson process by thinning against a mean-1 hourly profile.
"""

from __future__ import annotations

import math
import random
from typing import Final

DAY_S: Final = 86400.0
_TWOPI: Final = 2.0 * math.pi
# Seed of the noise stream of a model built without one (tests); the simulator passes its own.
NOISE_SEED: Final = 0x5EED


def gauss(rng: random.Random, sigma: float) -> float:
    """rng.gauss(0, sigma), bit for bit (CPython's Random.gauss, same stream and cache),
    without its call overhead: the magnetometer draws three per sample."""
    z: float | None = rng.gauss_next  # type: ignore[attr-defined]  # CPython's Random keeps the spare here
    rng.gauss_next = None  # type: ignore[attr-defined]
    if z is None:
        random = rng.random
        x2pi = random() * _TWOPI
        g2rad = math.sqrt(-2.0 * math.log(1.0 - random()))
        z = math.cos(x2pi) * g2rad
        rng.gauss_next = math.sin(x2pi) * g2rad  # type: ignore[attr-defined]
    return 0 + z * sigma


def gauss3(rng: random.Random, sigma: float) -> tuple[float, float, float]:
    """Three rng.gauss(0, sigma) draws in one call, bit for bit (the same pairs, the same spare
    left in gauss_next): a magnetometer sample's three axes."""
    rnd = rng.random
    z: float | None = rng.gauss_next  # type: ignore[attr-defined]  # CPython's Random keeps the spare here
    if z is None:
        x2pi = rnd() * _TWOPI
        g2rad = math.sqrt(-2.0 * math.log(1.0 - rnd()))
        a = math.cos(x2pi) * g2rad
        b = math.sin(x2pi) * g2rad
        x2pi = rnd() * _TWOPI
        g2rad = math.sqrt(-2.0 * math.log(1.0 - rnd()))
        rng.gauss_next = math.sin(x2pi) * g2rad  # type: ignore[attr-defined]
        return (0 + a * sigma, 0 + b * sigma, 0 + math.cos(x2pi) * g2rad * sigma)
    x2pi = rnd() * _TWOPI
    g2rad = math.sqrt(-2.0 * math.log(1.0 - rnd()))
    rng.gauss_next = None  # type: ignore[attr-defined]
    return (0 + z * sigma, 0 + math.cos(x2pi) * g2rad * sigma, 0 + math.sin(x2pi) * g2rad * sigma)


def hour_of_day(t: float, t_day0: float) -> int:
    """The wall-clock hour (0-23) at simulated time t."""
    return int(((t + t_day0) % DAY_S) // 3600)


def nhpp(rng: random.Random, t0: float, t1: float, rate_per_s: float, profile: tuple[float, ...],
         t_day0: float) -> list[float]:
    """Event times of an inhomogeneous Poisson process (thinning) with a mean-1 hourly profile."""
    peak = max(profile)
    lam_max = rate_per_s * peak
    out: list[float] = []
    if lam_max <= 0:
        return out
    t = t0
    while True:
        t += rng.expovariate(lam_max)
        if t >= t1:
            return out
        if rng.random() * peak < profile[hour_of_day(t, t_day0)]:
            out.append(t)


def profile_mean(profile: tuple[float, ...]) -> float:
    """The mean of an hourly profile, to scale a daily rate to its peak."""
    return sum(profile) / len(profile)


def ambient_temperature_c(t: float, t_day0: float, mean_c: float = 12.0, swing_c: float = 6.0) -> float:
    """Daily temperature cycle: coldest at 05:00, warmest at 17:00."""
    h = ((t + t_day0) % DAY_S) / 3600.0
    return mean_c - swing_c * math.cos((h - 5.0) / 24.0 * 2 * math.pi)

