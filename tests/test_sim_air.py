"""BLE air model: collision rates against the closed forms, capture, gateway out of range."""

from __future__ import annotations

import numpy as np

from simulator.air import (
    AirModel,
    Gateway,
    RadioParams,
    clean_probability_formula,
    clean_probability_one_channel,
)

AIR_S = 376e-6  # one 31-byte ADV_NONCONN_IND at 1 Mb/s (FIELD-FACTS)


def _run(n: int, interval_s: float, channel_model: str, seconds: float = 200.0, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    air = AirModel([Gateway("gw", 0.0, 0.0)], RadioParams(channel_model=channel_model))
    ts = []
    for _ in range(n):
        phase = rng.uniform(0, interval_s)
        k = np.arange(int(seconds / interval_s))
        ts.append(phase + k * interval_s + rng.uniform(0, 0.010, len(k)))  # advDelay
    t = np.concatenate(ts)
    chan = rng.integers(0, 3, len(t)) if channel_model == "random" else np.full(len(t), -1)
    air.add_arrays(t, np.full(len(t), AIR_S), np.arange(len(t)), np.full((1, len(t)), -60.0), chan)
    got = np.zeros(len(t), dtype=bool)

    def deliver(frame: int, gi: int, t_rx: float, rssi: float) -> None:
        got[frame] = True

    air.settle(float(t.max()) / 2, deliver)  # two settlements: the cut must not matter
    air.settle(np.inf, deliver)
    assert air.stats.events == len(t)
    return float(got.mean())


def test_random_channel_model_matches_the_field_facts_formula() -> None:
    n, interval = 200, 1.0
    clean = _run(n, interval + 0.005, "random")
    expected = clean_probability_formula(n, AIR_S, interval + 0.005)  # ~95 % for 200 nodes
    assert abs(clean - expected) < 0.01, (clean, expected)


def test_scanner_on_one_channel_sees_three_times_the_exponent() -> None:
    """Every event on 37/38/39 in turn: two events collide at a scanner whenever they overlap."""
    n, interval = 200, 1.0
    clean = _run(n, interval + 0.005, "sequential")
    expected = clean_probability_one_channel(n, AIR_S, interval + 0.005)  # ~86 %
    assert abs(clean - expected) < 0.012, (clean, expected)
    assert clean < clean_probability_formula(n, AIR_S, interval) - 0.05


def test_capture_and_out_of_range() -> None:
    air = AirModel([Gateway("a", 0, 0, out_of_range=[(10.0, 20.0)]), Gateway("b", 0, 0)], RadioParams())
    t = np.array([1.0, 1.0001, 15.0])
    rssi = np.array([[-50.0, -80.0, -50.0], [-80.0, -79.0, -50.0]])
    air.add_arrays(t, np.full(3, AIR_S), np.arange(3), rssi)
    heard: set[tuple[int, int]] = set()
    air.settle(np.inf, lambda f, g, _t, _r: heard.add((f, g)))
    # at "a" the strong packet captures over the weak one; at "b" they are equal: both lost
    assert (0, 0) in heard and (1, 0) not in heard
    assert (0, 1) not in heard and (1, 1) not in heard
    assert (2, 0) not in heard and (2, 1) in heard  # "a" out of range at t = 15 s
    assert air.stats.out_of_range["a"] == 1
