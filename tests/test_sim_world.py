"""Physical models: arrivals per hour, bins reaching thresholds, water per day."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.bins import Bin, BinParams
from simulator.parking import PARKING_PROFILE, ParkingParams, ParkingSpace
from simulator.water import Household, WaterParams
from simulator.world import DAY_S


def test_parking_arrivals_per_hour_match_the_profile_while_free() -> None:
    """Arrivals in each hour of day, given the time the spaces were free, are Poisson at the model rate."""
    days = 3
    spaces = [ParkingSpace(random.Random(f"p{i}"), ParkingParams(), 0.0) for i in range(150)]
    mean_profile = sum(PARKING_PROFILE) / 24
    arrivals = [0] * 24
    free_s = [0.0] * 24
    for sp in spaces:
        sp.ensure(days * DAY_S)
        for i, t in enumerate(sp.changes):
            if t >= days * DAY_S:
                break
            if sp.occ[i] and i > 0:
                arrivals[int(t % DAY_S // 3600)] += 1
            if not sp.occ[i]:  # free from t to the next change: spread over the hours
                end = min(sp.changes[i + 1] if i + 1 < len(sp.changes) else days * DAY_S, days * DAY_S)
                a = t
                while a < end:
                    h_end = (math.floor(a / 3600) + 1) * 3600
                    seg = min(end, h_end) - a
                    free_s[int(a % DAY_S // 3600)] += seg
                    a += seg
    rate = spaces[0].rate_free_per_s
    for h in range(24):
        expected = rate * PARKING_PROFILE[h] / mean_profile * free_s[h]
        if expected < 30:
            continue
        assert abs(arrivals[h] - expected) < 4.5 * math.sqrt(expected) + 2, (h, arrivals[h], expected)
    per_day = sum(arrivals) / len(spaces) / days
    assert 8.0 <= per_day <= 12.0, per_day  # ~10 arrivals per space per day
    day = sum(arrivals[9:18]) / 9
    night = sum(arrivals[1:5]) / 4
    assert day > 5 * night


def test_bins_reach_collection_thresholds_and_are_emptied() -> None:
    bins = [Bin(random.Random(f"b{i}"), BinParams(), 0.0) for i in range(60)]
    reached_90 = 0
    for b in bins:
        b.ensure(7 * DAY_S)
        assert b.collections, "a bin is collected at least once a week"
        first = b.collections[0]
        peak = max(f for t, f in zip(b.times, b.fill, strict=True) if t < first + 7 * DAY_S)
        reached_90 += peak >= 90.0
        assert b.fill_pct(first + 1e-6) <= 3.0  # emptied by the round
        assert b.distance_mm(first + 1e-6) > b.p.empty_mm - 0.05 * (b.p.empty_mm - b.p.full_mm)
    assert reached_90 >= 0.8 * len(bins)


def test_ultrasonic_noise_and_false_echoes() -> None:
    b = Bin(random.Random("echo"), BinParams(), 0.0)
    t = 3600.0
    truth = b.distance_mm(t)
    pings = [b.measured_mm(t) for _ in range(4000)]
    none = sum(p is None for p in pings) / len(pings)
    far = [p for p in pings if p is not None and abs(p - truth) > 60]
    assert 0.003 < none < 0.03
    assert 0.01 < len(far) / len(pings) < 0.06  # false echoes
    good = [p for p in pings if p is not None and abs(p - truth) <= 60]
    assert abs(sum(good) / len(good) - truth) < 2.0


def test_water_daily_volume_and_pulses() -> None:
    homes = [Household(random.Random(f"w{i}"), WaterParams(leak_p=0.0, burst_p=0.0), 0.0) for i in range(200)]
    days = 3
    vols = [h.volume_l(days * DAY_S) / days for h in homes]
    mean = sum(vols) / len(vols)
    assert 135.0 <= mean <= 165.0, mean  # ~150 l per household per day
    h = homes[0]
    t1 = h.time_of_volume(10.0, 0.0, DAY_S)
    assert t1 is not None and abs(h.volume_l(t1) - 10.0) < 1e-6
    # morning peak busier than the small hours
    morning = sum(h.volume_l(d * DAY_S + 9 * 3600) - h.volume_l(d * DAY_S + 6 * 3600) for h in homes for d in range(days))
    night = sum(h.volume_l(d * DAY_S + 4 * 3600) - h.volume_l(d * DAY_S + 1 * 3600) for h in homes for d in range(days))
    assert morning > 5 * night


def test_leaks_flow_continuously() -> None:
    h = Household(random.Random("leak"), WaterParams(leak_p=1.0, burst_p=0.0), 0.0)
    h.ensure(2 * DAY_S)
    assert h.leaks
    t = h.leaks[0] + 1.0
    assert all(h.flow_lph(t + k * 600.0) >= 4.0 - 1e-9 for k in range(100))


@settings(max_examples=60, deadline=None)
@given(hour=st.floats(0.0, 23.99), jitter_s=st.floats(0.0, 2 * DAY_S), every_days=st.floats(0.25, 7.0),
       t_day0=st.floats(0.0, DAY_S - 1), seed=st.integers(0, 2**32), days=st.integers(1, 5))
def test_bin_timeline_stays_sorted_and_physical(hour: float, jitter_s: float, every_days: float,
                                                t_day0: float, seed: int, days: int) -> None:
    """A round running past midnight once landed after the next day's deposits: bisect read
    the wrong fill (265 of 300 bins with a 07:00 start)."""
    p = BinParams(collection_hour=hour, collection_jitter_s=jitter_s, collection_every_days=every_days)
    b = Bin(random.Random(seed), p, t_day0)
    t_end = days * DAY_S
    b.ensure(t_end)
    assert b.times == sorted(b.times)
    assert b.collections == sorted(b.collections)
    assert all(0.0 <= f <= 110.0 for f in b.fill)
    for c in [c for c in b.collections if c < t_end]:  # (a query past t_end draws more days)
        assert b.fill_pct(c) <= 3.0  # emptied at the round, whatever came the same day
    for k in range(97):
        t = t_end * k / 96
        i = max(j for j, tj in enumerate(b.times) if tj <= t)  # the last event so far
        assert b.fill_pct(t) == b.fill[i]
        assert 30.0 <= b.distance_mm(t) <= p.empty_mm


@settings(max_examples=40, deadline=None)
@given(burst_s=st.floats(60.0, 2 * DAY_S), t_day0=st.floats(0.0, DAY_S - 1), seed=st.integers(0, 2**32),
       days=st.integers(1, 4))
def test_household_volume_never_runs_backwards(burst_s: float, t_day0: float, seed: int, days: int) -> None:
    """A draw or a burst running past midnight once ended after the next day's draws began."""
    p = WaterParams(burst_p=1.0, burst_s=burst_s, leak_p=0.5)
    h = Household(random.Random(seed), p, t_day0)
    t_end = days * DAY_S
    h.ensure(t_end)
    assert all(a < b for a, b in itertools.pairwise(h.bp))
    assert h.vol == sorted(h.vol) and all(f >= 0.0 for f in h.flow)
    vols = [h.volume_l(t_end * k / 200) for k in range(201)]
    assert vols == sorted(vols)
    for t in h.bursts:
        if t + 1.0 < min(t + burst_s, t_end):
            assert h.flow_lph(t + 1.0) >= p.burst_lph - 1e-6


def test_water_bursts_add_their_volume() -> None:
    """A burst runs at burst_lph for burst_s on top of the household's draws."""
    quiet = WaterParams(litres_per_day=0.0, leak_p=0.0, burst_p=1.0, burst_lph=1200.0, burst_s=1800.0)
    h = Household(random.Random("burst"), quiet, 0.0)
    h.ensure(2 * DAY_S)
    t = h.bursts[0]
    assert h.flow_lph(t + 1.0) == pytest.approx(1200.0)
    assert h.volume_l(t + 1800.0) - h.volume_l(t) == pytest.approx(600.0)
    assert h.flow_lph(t + 1801.0) == pytest.approx(0.0)


def _space(**params: float) -> ParkingSpace:
    sp = ParkingSpace(random.Random("mag"), ParkingParams(**params), 0.0, noise_rng=random.Random("noise"))
    sp.ensure(2 * DAY_S)
    return sp


def _free_quiet_time(sp: ParkingSpace) -> float:
    """A time with the space free and no passing car near it."""
    for i, t in enumerate(sp.changes[:-1]):
        if not sp.occ[i] and sp.changes[i + 1] - t > 600:
            for k in range(60):
                c = t + 5.0 + k * 5.0
                if not sp._transients_at(c) and c < sp.changes[i + 1]:
                    return c
    raise AssertionError("no quiet free time")


def test_magnetometer_noise_is_the_datasheet_rms_around_the_true_field() -> None:
    sp = _space(passing_per_hour=0.0)
    t = _free_quiet_time(sp)
    truth = sp.field_gauss(t, 25.0, noisy=False)
    samples = [sp.field_gauss(t, 25.0) for _ in range(4000)]
    for axis in range(3):
        xs = [s[axis] for s in samples]
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
        assert abs(mean - truth[axis]) < 4 * 0.004 / math.sqrt(len(xs))
        assert 0.9 * 0.004 < sd < 1.1 * 0.004
    assert 0.35 < math.dist(truth, (0, 0, 0)) < 0.55  # the earth's field, ~0.45 gauss


def test_magnetometer_offset_drifts_linearly_with_temperature() -> None:
    sp = _space(passing_per_hour=0.0)
    t = _free_quiet_time(sp)
    at25 = sp.field_gauss(t, 25.0, noisy=False)
    for temp in (-10.0, 5.0, 40.0):
        f = sp.field_gauss(t, temp, noisy=False)
        for axis in range(3):
            assert f[axis] - at25[axis] == pytest.approx(sp.tempco[axis] * (temp - 25.0), abs=1e-12)
    # per node, a few tenths of a milligauss per degree: a 30 C swing stays well under a car
    assert all(abs(c) < 5 * 0.0008 for c in sp.tempco)


def test_passing_cars_are_short_z_disturbances_at_the_traffic_rate() -> None:
    sp = _space(passing_per_hour=30.0)
    day = [tr for tr in sp.transients if tr[0] < DAY_S]
    assert 0.5 * 30 * 24 < len(day) < 1.5 * 30 * 24  # the hourly profile averages to 1
    checked = 0
    for a, b, d in day[:50]:
        assert 0.5 <= b - a <= 3.0 and d[0] == d[1] == 0.0 and d[2] > 0.0
        mid = (a + b) / 2
        if any(x[0] <= mid < x[1] for x in sp.transients if x != (a, b, d)):
            continue  # two cars at once
        base = sp.field_gauss(b + 0.001, 25.0, noisy=False) if not sp._transients_at(b + 0.001) else None
        if base is None or sp.occupied(mid) != sp.occupied(b + 0.001):
            continue
        assert sp.field_gauss(mid, 25.0, noisy=False)[2] - base[2] == pytest.approx(d[2])
        pts = sp.change_points(a - 1.0, b + 1.0)
        assert a in pts and b in pts  # the wake search looks at both edges
        checked += 1
    assert checked > 30
