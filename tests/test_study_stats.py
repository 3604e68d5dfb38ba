"""Intervals across seeds and paired differences, against simulation and hand computation."""

import math
import random

import numpy as np
import pytest
from scipy import stats

from trl_shaped.study.stats import paired_difference, seeds_to_resolve, t_interval, t_quantile

# Student t quantiles t_{df, 0.975} from a printed table (independent of scipy).
T975 = {
    1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582,
    6: 2.446912, 7: 2.364624, 8: 2.306004, 9: 2.262157, 10: 2.228139,
}  # fmt: skip


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


def test_identical_values_give_a_point_interval():
    interval = t_interval([0.25, 0.25, 0.25])
    assert (interval.low, interval.mean, interval.high, interval.sem) == (0.25, 0.25, 0.25, 0.0)
    assert interval.half_width == 0.0 and interval.sign() == 1


def test_t_quantile_matches_the_printed_table():
    for df, quantile in T975.items():
        assert t_quantile(df + 1, 0.95) == pytest.approx(quantile, rel=1e-6)
    with pytest.raises(ValueError, match="n must be >= 2"):
        t_quantile(1)


def test_interval_sd_and_half_width_by_hand():
    values = [1.0, 2.0, 3.0, 4.0]
    interval = t_interval(values)
    sd = math.sqrt(sum((v - 2.5) ** 2 for v in values) / 3)
    assert interval.sd == pytest.approx(sd)
    assert interval.half_width == pytest.approx(T975[3] * sd / 2, rel=1e-6)


def _first_n_from_table(sd, margin):
    # the definition, one n at a time, with the printed quantiles
    for n in range(2, max(T975) + 2):
        if T975[n - 1] * sd / math.sqrt(n) < margin:
            return n
    raise AssertionError("beyond the table")


def test_seeds_to_resolve_by_hand():
    # sd 1, margin 1: t/sqrt(n) is 8.98, 2.48, 1.59, 1.24, 1.049 for n = 2..6 and 0.925 for n = 7
    assert seeds_to_resolve(1.0, 1.0) == 7
    for sd, margin in [(1.0, 1.0), (0.3, 0.5), (2.0, 1.6), (0.05, 0.06), (1.0, 12.0), (1.0, 0.72)]:
        assert seeds_to_resolve(sd, margin) == _first_n_from_table(sd, margin), (sd, margin)


@pytest.mark.parametrize(("sd", "margin", "confidence"), [(1.0, 0.01, 0.95), (0.2, 0.013, 0.9), (3.0, 0.5, 0.99)])
def test_seeds_to_resolve_against_a_scan_of_every_n(sd, margin, confidence):
    n = np.arange(2, 200_000)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * sd / np.sqrt(n)
    expected = int(n[np.argmax(half < margin)])
    assert seeds_to_resolve(sd, margin, confidence) == expected
    # at that many seeds the interval is as narrow as asked, one fewer is not
    assert t_quantile(expected, confidence) * sd / math.sqrt(expected) < margin
    assert t_quantile(expected - 1, confidence) * sd / math.sqrt(expected - 1) >= margin


def test_seeds_to_resolve_edge_cases():
    assert seeds_to_resolve(0.0, 0.1) == 2  # no spread: two seeds resolve any nonzero difference
    assert seeds_to_resolve(1.0, 0.0) is None and seeds_to_resolve(1.0, -0.5) is None
    # a difference far below the spread: past the search bound (no overflow), None
    assert seeds_to_resolve(1.0, 1e-200) is None
    assert seeds_to_resolve(1.0, 0.01, max_seeds=1000) is None and seeds_to_resolve(1.0, 0.1, max_seeds=1000) < 1000
    with pytest.raises(ValueError, match="sd must be"):
        seeds_to_resolve(math.inf, 1.0)
    with pytest.raises(ValueError, match="confidence"):
        seeds_to_resolve(1.0, 1.0, confidence=1.0)


def test_at_the_projected_seed_count_about_half_the_studies_resolve():
    # true mean 0.1 and sd 0.3: at the projected n the expected half-width equals the mean, so a study of n seeds
    # resolves it about half the time (a t test's power at that size); a quarter of the seeds rarely does
    n = seeds_to_resolve(0.3, 0.1)
    rng = random.Random(1)

    def share_resolved(size, draws=400):
        return sum(t_interval([rng.gauss(0.1, 0.3) for _ in range(size)]).sign() == 1 for _ in range(draws)) / draws

    assert 0.4 < share_resolved(n) < 0.7
    assert share_resolved(n // 4) < 0.3
