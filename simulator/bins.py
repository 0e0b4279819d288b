"""A public bin: its fill level, its collection rounds, and what an ultrasonic ping reads.

Ground truth for the JSN-SR04T and VL53L1X (simulator.devices): deposits by a time-of-day
profile, rounds every few days that reach a bin 0-3 h late (carried into the next day's batch
when they run past midnight, so the timeline stays sorted), noise, false echoes and missing
echoes. Drawn a day at a time from the node's world stream; pings from its hardware stream.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Final

from simulator.world import DAY_S, NOISE_SEED, gauss, nhpp, profile_mean
from urbansense.compat import DATACLASS_SLOTS

# Relative deposit rate per hour into a public bin.
BIN_PROFILE: Final = (
    0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.4, 0.9, 1.2, 1.2, 1.3, 1.5,
    1.8, 1.7, 1.4, 1.3, 1.4, 1.6, 1.7, 1.5, 1.1, 0.8, 0.5, 0.2,
)  # fmt: skip


@dataclass(**DATACLASS_SLOTS)
class BinParams:
    empty_mm: int = 1200  # sensor to bin floor
    full_mm: int = 250  # sensor to the fill line (100 %)
    deposits_per_day: float = 40.0
    mean_deposit_pct: float = 1.1
    collection_every_days: float = 3.0
    collection_hour: float = 6.0
    collection_jitter_s: float = 3 * 3600.0  # a round reaches a bin 0-3 h after it starts
    noise_mm: float = 8.0  # JSN-SR04T repeatability, ~1 cm class
    false_echo_p: float = 0.03  # echo from a wall or a lid edge
    no_echo_p: float = 0.01  # absorbed by soft waste: the pulse times out


class Bin:
    """Fill level step function (percent) with collections; truth for distance readings."""

    def __init__(self, rng: random.Random, params: BinParams, t_day0: float,
                 noise_rng: random.Random | None = None) -> None:
        if params.collection_every_days <= 0:
            raise ValueError("collection_every_days must be > 0")
        self.rng = rng
        self.noise_rng = noise_rng if noise_rng is not None else random.Random(NOISE_SEED)
        self.p = params
        self.t_day0 = t_day0
        self.times: list[float] = [0.0]
        self.fill: list[float] = [rng.uniform(0, 60)]
        self.collections: list[float] = []
        self._gen_until = 0.0
        self._carry: list[tuple[float, float | None]] = []  # events past the last day drawn
        # The fill step fill_pct last looked up, valid on [_seg_lo, _seg_hi).
        self._seg_lo = math.inf
        self._seg_hi = -math.inf
        self._seg_fill = 0.0
        self._seg_mm = 0.0
        # First collection at the next collection hour, staggered across bins by day.
        first_day = rng.randrange(max(1, round(params.collection_every_days)))
        start = params.collection_hour * 3600 - t_day0 % DAY_S
        if start <= 0:
            start += DAY_S
        self._next_collection = start + first_day * DAY_S

    def ensure(self, t: float) -> None:
        while self._gen_until <= t + 60.0:
            self._generate_day(self._gen_until, self._gen_until + DAY_S)

    def _generate_day(self, t0: float, t1: float) -> None:
        rng = self.rng
        deposits = nhpp(rng, t0, t1, self.p.deposits_per_day / DAY_S / profile_mean(BIN_PROFILE),
                         BIN_PROFILE, self.t_day0)
        events = self._carry + [(t, rng.expovariate(1.0 / self.p.mean_deposit_pct)) for t in deposits]
        while self._next_collection < t1:
            events.append((self._next_collection + rng.uniform(0, self.p.collection_jitter_s), None))
            self._next_collection += self.p.collection_every_days * DAY_S
        events.sort(key=lambda e: e[0])
        # A round that ends past this day waits for the next day's batch, where it takes its
        # place among that day's deposits: the timeline stays sorted for bisect.
        cut = bisect.bisect_left([e[0] for e in events], t1)
        self._carry = events[cut:]
        level = self.fill[-1]
        for t, amount in events[:cut]:
            if amount is None:
                level = rng.uniform(0.0, 3.0)
                self.collections.append(t)
            else:
                level = min(110.0, level + amount)  # overflowing: heaped above the rim
            self.times.append(t)
            self.fill.append(level)
        self._gen_until = t1

    def _segment(self, t: float) -> None:
        self.ensure(t)
        times = self.times
        i = bisect.bisect_right(times, t) - 1
        # Later days only add steps from _gen_until on (a late round is carried, not inserted).
        self._seg_lo = times[i]
        self._seg_hi = times[i + 1] if i + 1 < len(times) else self._gen_until
        f = self._seg_fill = self.fill[i]
        span = self.p.empty_mm - self.p.full_mm
        self._seg_mm = max(30.0, self.p.empty_mm - span * f / 100.0)

    def fill_pct(self, t: float) -> float:
        if not self._seg_lo <= t < self._seg_hi:
            self._segment(t)
        return self._seg_fill

    def distance_mm(self, t: float) -> float:
        """True distance from the sensor to the waste surface."""
        if not self._seg_lo <= t < self._seg_hi:
            self._segment(t)
        return self._seg_mm

    def measured_mm(self, t: float) -> float | None:
        """One ultrasonic ping: noise, occasional false echoes, occasional no echo (None)."""
        rng = self.noise_rng
        r = rng.random()
        if r < self.p.no_echo_p:
            return None
        if r < self.p.no_echo_p + self.p.false_echo_p:
            return rng.uniform(150.0, self.p.empty_mm * 0.6)
        return max(20.0, self.distance_mm(t) + gauss(rng, self.p.noise_mm))
