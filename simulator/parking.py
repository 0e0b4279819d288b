"""A parking space: its occupancy timeline and the magnetic field at the sensor under it.

Ground truth for the LIS3MDL (simulator.devices): arrivals by a time-of-day profile, stays
that last the night in the evening, a vehicle signature per stay, cars passing in the next
lane, the earth field and a per-node temperature drift. Drawn a day at a time from the node's
world stream; the field's noise from its hardware stream (see simulator.world).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Final

from simulator.world import DAY_S, NOISE_SEED, gauss3, hour_of_day, nhpp, profile_mean
from urbansense.compat import DATACLASS_SLOTS

# Relative arrival intensity per hour of day (on-street parking in a town centre; a
# modelling assumption: quiet nights, a morning and a lunchtime peak, busy afternoons).
PARKING_PROFILE: Final = (
    0.15, 0.1, 0.08, 0.08, 0.1, 0.25, 0.6, 1.2, 1.6, 1.5, 1.4, 1.5,
    1.7, 1.6, 1.4, 1.4, 1.5, 1.6, 1.4, 1.1, 0.8, 0.6, 0.4, 0.25,
)  # fmt: skip
# Relative household water use per hour (morning and evening peaks).


@dataclass(**DATACLASS_SLOTS)
class ParkingParams:
    arrivals_per_day: float = 10.0
    mean_stay_s: float = 3600.0  # daytime stays; overnight stays last until morning
    passing_per_hour: float = 6.0  # vehicles in the next lane: short magnetic disturbances
    signature_gauss: float = 0.35  # typical |dB| of a parked car above the sensor
    noise_gauss: float = 0.004  # LIS3MDL rms noise, +-4 gauss, UHP (datasheet ~3.2 mG)
    tempco_gauss_per_c: float = 0.0008  # offset drift with temperature, per node
    # The firmware calibrates its baseline at install, when the installer sees the space empty.
    occupied_at_install_p: float = 0.0


class ParkingSpace:
    """Occupancy timeline and the magnetic field at the sensor (gauss, x/y/z)."""

    def __init__(self, rng: random.Random, params: ParkingParams, t_day0: float,
                 noise_rng: random.Random | None = None) -> None:
        self.rng = rng
        self.noise_rng = noise_rng if noise_rng is not None else random.Random(NOISE_SEED)
        self.p = params
        self.t_day0 = t_day0
        # Earth field at the sensor (~0.45 gauss, inclination ~60 deg in France), per node.
        az = rng.uniform(0, 2 * math.pi)
        self.earth = (0.22 * math.cos(az), 0.22 * math.sin(az), -0.40)
        self.tempco = tuple(rng.gauss(0, params.tempco_gauss_per_c) for _ in range(3))
        # change times; occ[i] is the occupancy from change[i]; vehicle[i] its signature
        self.changes: list[float] = [0.0]
        self.occ: list[bool] = [rng.random() < params.occupied_at_install_p]
        self.vehicle: list[tuple[float, float, float]] = [self._signature()]
        self.transients: list[tuple[float, float, tuple[float, float, float]]] = []
        self._tr_t0: list[float] = []  # the transients' start times, for bisect
        self._gen_until = 0.0
        # The field without its temperature term is a step function: field_gauss keeps the
        # step it last looked up, valid on [_seg_lo, _seg_hi) (a wake's reads share it).
        self._seg_lo = math.inf
        self._seg_hi = -math.inf
        self._seg: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._seg_tr: tuple[float, ...] = ()  # z of the passing cars then, newest first
        # The arrival rate while free is chosen so a space sees ~arrivals_per_day a day.
        free_share = max(0.05, 1.0 - params.arrivals_per_day * params.mean_stay_s / DAY_S)
        self.rate_free_per_s = params.arrivals_per_day / (DAY_S * free_share)

    def _signature(self) -> tuple[float, float, float]:
        s = self.p.signature_gauss * self.rng.lognormvariate(0, 0.4)
        # Steel above the sensor mostly concentrates the (downward) earth field: |z| grows.
        return (self.rng.gauss(0, 0.3) * s, self.rng.gauss(0, 0.3) * s, s * self.rng.choice((-1, -1, -1, 1)))

    def ensure(self, t: float) -> None:
        while self._gen_until <= t + 60.0:
            self._generate_day(self._gen_until, self._gen_until + DAY_S)

    def _generate_day(self, t0: float, t1: float) -> None:
        rng = self.rng
        t = max(t0, self.changes[-1])
        prof = PARKING_PROFILE
        m = profile_mean(prof)
        while t < t1:
            if self.occ[-1]:
                h = hour_of_day(t, self.t_day0)
                stay = rng.expovariate(1.0 / self.p.mean_stay_s)
                if h >= 19 or h < 6:  # evening arrivals tend to stay the night
                    stay += rng.uniform(0, 9 * 3600) if rng.random() < 0.5 else 0.0
                t += max(120.0, stay)
                self.changes.append(t)
                self.occ.append(False)
                self.vehicle.append((0.0, 0.0, 0.0))
            else:
                peak = max(prof) / m
                while True:
                    t += rng.expovariate(self.rate_free_per_s * peak)
                    if rng.random() * peak < prof[hour_of_day(t, self.t_day0)] / m:
                        break
                self.changes.append(t)
                self.occ.append(True)
                self.vehicle.append(self._signature())
        for tp in nhpp(rng, t0, t1, self.p.passing_per_hour / 3600.0, PARKING_PROFILE, self.t_day0):
            s = 0.08 * rng.lognormvariate(0, 0.5)
            self.transients.append((tp, tp + rng.uniform(0.5, 3.0), (0.0, 0.0, s)))
            self._tr_t0.append(tp)
        self._gen_until = t1

    def occupied(self, t: float) -> bool:
        self.ensure(t)
        return self.occ[bisect.bisect_right(self.changes, t) - 1]

    def _segment(self, t: float) -> None:
        """Look up the step of the field that holds at t: earth + vehicle, the passing cars
        over the sensor, and until when neither changes."""
        if self._gen_until <= t + 60.0:
            self.ensure(t)
        ch = self.changes
        i = bisect.bisect_right(ch, t) - 1
        # The next change is drawn already (a day runs until its last change passes its end);
        # a day not drawn yet can only add passing cars from _gen_until on.
        hi = ch[i + 1] if i + 1 < len(ch) else self._gen_until
        if hi > self._gen_until:
            hi = self._gen_until
        e = self.earth
        if self.occ[i]:
            v = self.vehicle[i]
            self._seg = (e[0] + v[0], e[1] + v[1], e[2] + v[2])
        else:  # the same sums as with a (0, 0, 0) signature, bit for bit
            self._seg = (e[0] + 0.0, e[1] + 0.0, e[2] + 0.0)
        tr = self.transients
        j = bisect.bisect_right(self._tr_t0, t) - 1
        if j + 1 < len(tr) and tr[j + 1][0] < hi:
            hi = tr[j + 1][0]
        zs: list[float] = []
        while j >= 0 and tr[j][0] > t - 5.0:  # newest first, as _transients_at lists them
            if t < tr[j][1]:
                zs.append(tr[j][2][2])
                if tr[j][1] < hi:
                    hi = tr[j][1]
            j -= 1
        self._seg_tr = tuple(zs)
        self._seg_lo = t
        self._seg_hi = hi

    def field_gauss(self, t: float, temp_c: float, noisy: bool = True) -> tuple[float, float, float]:
        if not self._seg_lo <= t < self._seg_hi:
            self._segment(t)
        dt = temp_c - 25.0
        c = self._seg
        tc = self.tempco
        x = c[0] + tc[0] * dt
        y = c[1] + tc[1] * dt
        z = c[2] + tc[2] * dt
        for dz in self._seg_tr:
            z += dz
        if noisy:
            nx, ny, nz = gauss3(self.noise_rng, self.p.noise_gauss)
            return (x + nx, y + ny, z + nz)
        return (x, y, z)

    def _transients_at(self, t: float) -> list[tuple[float, float, tuple[float, float, float]]]:
        tr = self.transients
        i = bisect.bisect_right(tr, (t, math.inf)) - 1
        out = []
        while i >= 0 and tr[i][0] > t - 5.0:
            if tr[i][0] <= t < tr[i][1]:
                out.append(tr[i])
            i -= 1
        return out

    def change_points(self, t0: float, t1: float) -> list[float]:
        """Times in (t0, t1] at which the field may change (arrivals, departures, transients)."""
        self.ensure(t1)
        ch = self.changes
        pts = ch[bisect.bisect_right(ch, t0):bisect.bisect_right(ch, t1)]
        tr = self.transients
        n = len(tr)
        k = bisect.bisect_right(self._tr_t0, t0)
        added = False
        while k < n:
            a, b, _ = tr[k]
            if a > t1:
                break
            pts.append(a)
            if b <= t1:
                pts.append(b)
            added = True
            k += 1
        if added:
            pts.sort()
        return pts

    def arrivals_between(self, t0: float, t1: float) -> int:
        self.ensure(t1)
        lo = bisect.bisect_right(self.changes, t0)
        hi = bisect.bisect_right(self.changes, t1)
        return sum(1 for i in range(lo, hi) if self.occ[i])
