"""The physical world around each node, with ground truth: parking spaces, bins, water use.

Each model draws its future lazily, a day at a time, from the node's own world stream, so
a node's world does not depend on how many other nodes exist or which process runs it.
Sensor noise comes from a second stream (the node's hardware stream in the simulator): how
often the firmware samples must not change what happens in the street.
Times are simulated seconds from the start of the run; ``t_day0`` is the wall-clock hour
of t = 0 expressed in seconds (profiles follow the time of day).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Final

from urbansense.compat import DATACLASS_SLOTS

DAY_S: Final = 86400.0
_TWOPI: Final = 2.0 * math.pi
# Seed of the noise stream of a model built without one (tests); the simulator passes its own.
NOISE_SEED: Final = 0x5EED

# Relative arrival intensity per hour of day (on-street parking in a town centre; a
# modelling assumption: quiet nights, a morning and a lunchtime peak, busy afternoons).
PARKING_PROFILE: Final = (
    0.15, 0.1, 0.08, 0.08, 0.1, 0.25, 0.6, 1.2, 1.6, 1.5, 1.4, 1.5,
    1.7, 1.6, 1.4, 1.4, 1.5, 1.6, 1.4, 1.1, 0.8, 0.6, 0.4, 0.25,
)  # fmt: skip
# Relative household water use per hour (morning and evening peaks).
WATER_PROFILE: Final = (
    0.2, 0.1, 0.1, 0.1, 0.2, 0.6, 1.8, 2.4, 1.8, 1.2, 1.0, 1.0,
    1.1, 1.0, 0.8, 0.8, 0.9, 1.1, 1.5, 1.8, 1.7, 1.3, 0.8, 0.4,
)  # fmt: skip
# Relative deposit rate per hour into a public bin.
BIN_PROFILE: Final = (
    0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.4, 0.9, 1.2, 1.2, 1.3, 1.5,
    1.8, 1.7, 1.4, 1.3, 1.4, 1.6, 1.7, 1.5, 1.1, 0.8, 0.5, 0.2,
)  # fmt: skip


def _gauss(rng: random.Random, sigma: float) -> float:
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


def _gauss3(rng: random.Random, sigma: float) -> tuple[float, float, float]:
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


def _hour(t: float, t_day0: float) -> int:
    return int(((t + t_day0) % DAY_S) // 3600)


def _nhpp(rng: random.Random, t0: float, t1: float, rate_per_s: float, profile: tuple[float, ...],
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
        if rng.random() * peak < profile[_hour(t, t_day0)]:
            out.append(t)


def _mean(profile: tuple[float, ...]) -> float:
    return sum(profile) / len(profile)


def ambient_temperature_c(t: float, t_day0: float, mean_c: float = 12.0, swing_c: float = 6.0) -> float:
    """Daily temperature cycle: coldest at 05:00, warmest at 17:00."""
    h = ((t + t_day0) % DAY_S) / 3600.0
    return mean_c - swing_c * math.cos((h - 5.0) / 24.0 * 2 * math.pi)


# ---------------------------------------------------------------------------- parking


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
        m = _mean(prof)
        while t < t1:
            if self.occ[-1]:
                h = _hour(t, self.t_day0)
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
                    if rng.random() * peak < prof[_hour(t, self.t_day0)] / m:
                        break
                self.changes.append(t)
                self.occ.append(True)
                self.vehicle.append(self._signature())
        for tp in _nhpp(rng, t0, t1, self.p.passing_per_hour / 3600.0, PARKING_PROFILE, self.t_day0):
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
            nx, ny, nz = _gauss3(self.noise_rng, self.p.noise_gauss)
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


# ---------------------------------------------------------------------------- bins


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
        deposits = _nhpp(rng, t0, t1, self.p.deposits_per_day / DAY_S / _mean(BIN_PROFILE),
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
        return max(20.0, self.distance_mm(t) + _gauss(rng, self.p.noise_mm))


# ---------------------------------------------------------------------------- water


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
        rate = self.p.litres_per_day / _MEAN_DRAW_L / DAY_S / _mean(WATER_PROFILE)
        weights = [w for *_, w in _DRAWS]
        for t in _nhpp(rng, t0, t1, rate, WATER_PROFILE, self.t_day0):
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
