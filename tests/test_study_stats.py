"""Intervals across seeds and paired differences, against simulation and hand computation."""

import math
import random

import pytest

from trl_shaped.study.stats import paired_difference, t_interval

# Student t quantiles t_{df, 0.975} from a printed table (independent of scipy).
T975 = {2: 4.302653, 3: 3.182446, 4: 2.776445}


def test_interval_of_four_values_by_hand():
    interval = t_interval([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)
    half = T975[3] * sd / 2
    assert interval.mean == pytest.approx(2.5)
    assert interval.sem == pytest.approx(sd / 2)
    assert (interval.low, interval.high) == (pytest.approx(2.5 - half, rel=1e-6), pytest.approx(2.5 + half, rel=1e-6))
    assert interval.n == 4 and interval.sign() == 1


@pytest.mark.parametrize("n", [3, 5])
def test_interval_covers_the_true_mean_at_its_nominal_rate(n):
    rng = random.Random(n)
    draws, mu, sigma = 2000, 1.7, 0.3
    covered = covered_normal = 0
    for _ in range(draws):
        values = [rng.gauss(mu, sigma) for _ in range(n)]
        interval = t_interval(values, 0.95)
        covered += interval.low <= mu <= interval.high
        # the same interval with the normal quantile 1.96 instead of t: too narrow for a handful of seeds
        covered_normal += abs(interval.mean - mu) <= 1.959964 * interval.sem
    tolerance = 4 * math.sqrt(0.95 * 0.05 / draws)  # 4 binomial standard deviations around 0.95
    assert abs(covered / draws - 0.95) < tolerance
    # the check has the power to see a wrong quantile
    assert covered_normal / draws < 0.95 - tolerance


def test_paired_difference_by_hand_uses_only_common_seeds():
    a = {0: 1.0, 1: 2.0, 2: 4.0}
    b = {0: 0.5, 1: 1.0, 2: 3.0, 3: 9.0}  # seed 3 has no partner
    diffs = [0.5, 1.0, 1.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    interval = paired_difference(a, b)
    assert interval.n == 3 and interval.mean == pytest.approx(mean)
    assert interval.high - interval.mean == pytest.approx(T975[2] * sd / math.sqrt(3), rel=1e-6)
    assert interval.sign() == 1


def test_pairing_removes_the_noise_two_presets_share():
    # a seed effect shared by both presets, plus a constant gap of 0.1: paired, the gap is resolved; unpaired it is not
    rng = random.Random(0)
    seed_effect = {s: rng.gauss(0, 1.0) for s in range(4)}
    a = {s: 2.0 + e + rng.gauss(0, 0.01) for s, e in seed_effect.items()}
    b = {s: 1.9 + e + rng.gauss(0, 0.01) for s, e in seed_effect.items()}
    assert paired_difference(a, b).sign() == 1
    unpaired_half = T975[3] * math.hypot(t_interval(a.values()).sem, t_interval(b.values()).sem)
    assert unpaired_half > abs(paired_difference(a, b).mean)


def test_one_value_resolves_nothing_and_bad_values_fail():
    single = t_interval([0.3])
    assert single.low == -math.inf and single.high == math.inf and single.sign() == 0
    assert single.to_dict()["low"] is None
    with pytest.raises(ValueError, match="finite"):
        t_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        t_interval([])
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: 1.0}, {1: 1.0})
