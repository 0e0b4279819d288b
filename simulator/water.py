"""A household behind a water meter: flow as a step function, volume as its integral.

Ground truth for the meter's reed/hall pulses (simulator.devices): draws (toilet, tap,
shower, washing machine, dishwasher) by a time-of-day profile, leaks and bursts; a draw or a
burst that runs past midnight ends in the next day's batch, so the volume never runs
backwards. Drawn a day at a time from the node's world stream.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Final

from simulator.world import DAY_S, nhpp, profile_mean
from urbansense.compat import DATACLASS_SLOTS

# Relative household water use per hour (morning and evening peaks).
WATER_PROFILE: Final = (
    0.2, 0.1, 0.1, 0.1, 0.2, 0.6, 1.8, 2.4, 1.8, 1.2, 1.0, 1.0,
    1.1, 1.0, 0.8, 0.8, 0.9, 1.1, 1.5, 1.8, 1.7, 1.3, 0.8, 0.4,
)  # fmt: skip


@dataclass(**DATACLASS_SLOTS)
class WaterParams:
    litres_per_day: float = 150.0
    leak_p: float = 0.02  # share of meters that start a leak during a day
    leak_lph: float = 4.0  # a running toilet cistern
    burst_p: float = 0.002  # share of meters with a burst pipe during a day
    burst_lph: float = 1200.0
    burst_s: float = 1800.0


# Household draws: (litres, flow l/min, weight) - toilet, tap, shower, washing machine, dishwasher
_DRAWS: Final = ((6.0, 9.0, 0.45), (1.5, 5.0, 0.35), (45.0, 9.0, 0.12), (50.0, 12.0, 0.05),
                 (12.0, 6.0, 0.03))  # fmt: skip
_MEAN_DRAW_L: Final = sum(v * w for v, _, w in _DRAWS) / sum(w for *_, w in _DRAWS)


class Household:
    """Flow is a step function; volume is its integral (litres). Pulses follow the volume."""

    def __init__(self, rng: random.Random, params: WaterParams, t_day0: float) -> None:
        self.rng = rng
        self.p = params
        self.t_day0 = t_day0
        self.bp: list[float] = [0.0]  # breakpoints (s)
        self.flow: list[float] = [0.0]  # l/s from bp[i]
        self.vol: list[float] = [0.0]  # litres at bp[i]
        self.leaks: list[float] = []
        self.bursts: list[float] = []
        self._leak_lps = 0.0
        self._gen_until = 0.0
        self._carry: list[tuple[float, float]] = []  # flow changes past the last day drawn

    def ensure(self, t: float) -> None:
        while self._gen_until <= t + 60.0:
            self._generate_day(self._gen_until, self._gen_until + DAY_S)

    def _generate_day(self, t0: float, t1: float) -> None:
        rng = self.rng
        deltas = list(self._carry)  # (time, d flow l/s): draws still running from the day before
        rate = self.p.litres_per_day / _MEAN_DRAW_L / DAY_S / profile_mean(WATER_PROFILE)
        weights = [w for *_, w in _DRAWS]
        for t in nhpp(rng, t0, t1, rate, WATER_PROFILE, self.t_day0):
            litres, lpm, _ = rng.choices(_DRAWS, weights)[0]
            litres *= rng.uniform(0.7, 1.3)
            f = lpm / 60.0
            deltas.append((t, f))
            deltas.append((t + litres / f, -f))
        if rng.random() < self.p.leak_p and self._leak_lps == 0.0:
            t = rng.uniform(t0, t1)
            self._leak_lps = self.p.leak_lph / 3600.0
            self.leaks.append(t)
            deltas.append((t, self._leak_lps))
        if rng.random() < self.p.burst_p:
            t = rng.uniform(t0, t1)
            self.bursts.append(t)
            deltas.append((t, self.p.burst_lph / 3600.0))
            deltas.append((t + self.p.burst_s, -self.p.burst_lph / 3600.0))
        deltas.sort()
        # The end of a draw or a burst that runs past this day belongs to the next day's
        # batch: breakpoints stay sorted, and the volume never runs backwards.
        cut = bisect.bisect_left(deltas, (t1, -math.inf))
        self._carry = deltas[cut:]
        flow = self.flow[-1]
        for t, d in deltas[:cut]:
            last = self.bp[-1]
            v = self.vol[-1] + self.flow[-1] * (t - last)
            flow = max(0.0, flow + d)
            if t == last:
                self.flow[-1] = flow
                continue
            self.bp.append(t)
            self.flow.append(flow)
            self.vol.append(v)
        self._gen_until = t1

    def volume_l(self, t: float) -> float:
        self.ensure(t)
        i = bisect.bisect_right(self.bp, t) - 1
        return self.vol[i] + self.flow[i] * (t - self.bp[i])

    def flow_lph(self, t: float) -> float:
        self.ensure(t)
        return self.flow[bisect.bisect_right(self.bp, t) - 1] * 3600.0

    def time_of_volume(self, v: float, t_from: float, t_limit: float) -> float | None:
        """First time >= t_from at which the volume reaches v litres (None if not before t_limit)."""
        self.ensure(t_limit)
        i = bisect.bisect_right(self.bp, t_from) - 1
        while i < len(self.bp):
            t_end = self.bp[i + 1] if i + 1 < len(self.bp) else math.inf
            v_end = self.vol[i + 1] if i + 1 < len(self.bp) else math.inf
            if v_end >= v and self.flow[i] > 0:
                t = self.bp[i] + (v - self.vol[i]) / self.flow[i]
                t = max(t, t_from)
                return t if t <= t_limit else None
            if t_end > t_limit:
                return None
            i += 1
        return None
