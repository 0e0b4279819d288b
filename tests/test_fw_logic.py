"""Decision logic of the three node kinds, pure (no hardware)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.firmware_loader import firmware_module

us_bin = firmware_module("us_bin")
us_parking = firmware_module("us_parking")
us_proto = firmware_module("us_proto")
us_water = firmware_module("us_water")


BASE = [20000, -5000, 42000]
field = st.lists(st.integers(-60000, 60000), min_size=3, max_size=3)


ON_NT = 12000
OFF_NT = 6000
# Readings that exercise both states: near the baseline (free, drift), between the
# thresholds (hysteresis band), a car's worth away, and anything at all.
near = st.tuples(*[st.integers(b - 5000, b + 5000) for b in BASE]).map(list)
band = st.tuples(*[st.integers(b - 9000, b + 9000) for b in BASE]).map(list)
car = st.tuples(st.integers(-40000, 40000), st.integers(-40000, 40000), st.integers(50000, 90000)).map(list)
reading = st.one_of(near, band, car, field)


def _d2(a: list[int], b: list[int]) -> int:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


@settings(max_examples=400, deadline=None)
@given(st.lists(reading, max_size=80), st.integers(1, 4))
def test_parking_detector_matches_a_model_of_its_specification(readings: list[list[int]], confirm: int) -> None:
    """Occupied after `confirm` consecutive readings beyond the enter threshold, free after
    `confirm` consecutive readings inside the exit threshold; the baseline follows 1/32 of
    each quiet free reading. An independent model, compared reading by reading (a detector
    that toggles every `confirm` readings whatever the field would fail at the first)."""
    st_: dict = {"b": list(BASE)}
    det = us_parking.Detector(st_, ON_NT, OFF_NT, confirm)
    occ = False
    run = 0
    base = list(BASE)
    events = 0
    for r in readings:
        d2 = _d2(r, base)
        if occ:
            beyond = d2 < OFF_NT * OFF_NT
        else:
            beyond = d2 > ON_NT * ON_NT
            if d2 < OFF_NT * OFF_NT:
                base = [b + ((x - b) >> 5) for x, b in zip(r, base, strict=True)]
        run = run + 1 if beyond else 0
        flip = run >= confirm
        if flip:
            occ = not occ
            run = 0
            events += 1
        assert det.update(r) == flip
        assert det.occupied == occ and st_["b"] == base and det.pending() == (run > 0)
    assert st_["ev"] == events


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3000, 3000), max_size=60))
def test_parking_noise_below_hysteresis_never_changes_state(noise: list[int]) -> None:
    det = us_parking.Detector({"b": list(BASE)}, 12000, 6000, 1)
    for n in noise:
        assert not det.update([BASE[0] + n, BASE[1] - n, BASE[2] + n])
    assert not det.occupied


def test_parking_arrival_departure_and_interrupt_plan() -> None:
    st_ = {"b": list(BASE)}
    det = us_parking.Detector(st_, 12000, 6000, 2)
    car = [BASE[0] - 15000, BASE[1], BASE[2] + 20000]
    assert det.interrupt_plan(12000) == (7, 54000)
    assert not det.update(car) and det.pending()
    assert det.update(car) and det.occupied
    axes, ths = det.interrupt_plan(12000)
    assert axes == 4 and 5000 < ths < 20000  # x magnitude dropped under the car
    assert not det.update(BASE)
    assert det.update(BASE) and not det.occupied
    assert st_["ev"] == 2


def test_parking_baseline_follows_slow_drift() -> None:
    st_ = {"b": list(BASE)}
    det = us_parking.Detector(st_, 12000, 6000, 2)
    for step in range(400):
        det.update([BASE[0] + step * 25, BASE[1], BASE[2]])  # 10 uT drift in total
    assert not det.occupied
    assert st_["b"][0] > BASE[0] + 8000


def test_bin_median_rejects_outliers_and_failures() -> None:
    assert us_bin.robust_distance_mm([800, 805, 3000, 798, None], 20, 4000, 100) == 800
    assert us_bin.robust_distance_mm([800, None, None, 10, 5000], 20, 4000, 100) is None
    assert us_bin.robust_distance_mm([400, 402, 1200, 401, 399], 20, 4000, 100) == 400


@settings(max_examples=300, deadline=None)
@given(st.integers(400, 3500), st.lists(st.integers(-10, 10), min_size=1, max_size=9),
       st.lists(st.one_of(st.none(), st.integers(0, 6000)), max_size=8), st.randoms(use_true_random=False))
def test_bin_distance_is_robust_to_fewer_than_half_bad_pings(true_mm: int, noise: list[int],
                                                             junk: list[int | None], rnd: random.Random) -> None:
    """Good pings within 10 mm of the truth and more of them than of bad ones (failed,
    out of range, or echoes more than reject + 10 mm off): the result is within 10 mm of the
    truth, wherever the bad ones fall. No more good than bad: no answer, or a good one."""
    good = [true_mm + n for n in noise]
    bad = [j for j in junk if j is None or abs(j - true_mm) > 110]
    pings = good + bad
    rnd.shuffle(pings)
    d = us_bin.robust_distance_mm(pings, 20, 4000, 100)
    if len(good) > len(bad):
        assert d is not None and abs(d - true_mm) <= 10
    elif sum(1 for b in bad if b is not None and 20 <= b <= 4000) == 0:
        assert d is None or abs(d - true_mm) <= 10  # only failures beside the good: never made up


def test_bin_fill_and_crossings() -> None:
    assert us_bin.fill_pct(1200, 1200, 250) == 0
    assert us_bin.fill_pct(250, 1200, 250) == 100
    assert us_bin.fill_pct(100, 1200, 250) == 100
    logic = us_bin.FillLogic({})
    seq = [10, 40, 51, 49, 52, 74, 76, 91, 95, 5]
    reports = [logic.update(p) for p in seq]
    assert [r[0] for r in reports] == [False, False, True, False, False, False, True, True, False, True]
    assert reports[-1][1]  # emptied
    assert logic.st["lv"] == 0


def test_water_totalizer_restore_is_max_of_rtc_and_flash() -> None:
    st_ = {"pc": 50, "nv": 40}
    m = us_water.Meter(st_, 1000)
    m.restore(45)
    assert st_["pc"] == 50
    m.restore(70)
    assert st_["pc"] == 70


def test_water_leak_and_burst() -> None:
    st_: dict = {}
    m = us_water.Meter(st_, 1000, burst_lph=600)
    t = 0
    for _ in range(25):  # one pulse every hour for 25 h
        m.pulse(t)
        t += 3600
    assert st_["al"] & us_proto.A_LEAK
    m.tick(t + 3600)  # an hour without flow clears it
    assert not st_["al"] & us_proto.A_LEAK
    for k in range(10):  # 10 L in one minute = 600 L/h
        m.pulse(t + 7200 + k)
    assert st_["al"] & us_proto.A_BURST
