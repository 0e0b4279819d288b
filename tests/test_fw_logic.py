"""Decision logic of the three node kinds, pure (no hardware)."""
# ruff: noqa: I001  (the fw_fakes import puts firmware/lib on sys.path: it must come first)

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tests import fw_fakes  # noqa: F401  (firmware/lib on sys.path)

import us_bin
import us_parking
import us_proto
import us_water

BASE = [20000, -5000, 42000]
field = st.lists(st.integers(-60000, 60000), min_size=3, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(field, max_size=80), st.integers(1, 4))
def test_parking_never_flaps_faster_than_confirmation(readings: list[list[int]], confirm: int) -> None:
    det = us_parking.Detector({"b": list(BASE)}, 12000, 6000, confirm)
    changes = []
    history = []
    for i, r in enumerate(readings):
        before = det.occupied
        if det.update(r):
            changes.append(i)
            assert det.occupied != before
            # the last `confirm` readings all agreed with the new state
            history_tail = history[-(confirm - 1):] if confirm > 1 else []
            for occ_side in [*history_tail, (r, before)]:
                assert occ_side[1] == before
        history.append((r, det.occupied))
    for a, b in itertools.pairwise(changes):
        assert b - a >= confirm


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


@given(st.lists(st.one_of(st.none(), st.integers(0, 6000)), min_size=1, max_size=9))
def test_bin_median_stays_inside_valid_samples(samples: list[int | None]) -> None:
    d = us_bin.robust_distance_mm(samples, 20, 4000, 100)
    if d is not None:
        valid = [s for s in samples if s is not None and 20 <= s <= 4000]
        assert min(valid) <= d <= max(valid)


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
