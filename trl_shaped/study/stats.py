"""Intervals across seeds and paired differences (Student t), as plain functions over lists of numbers.

A study has a handful of seeds per preset, so the normal quantile would be far too narrow: the interval of the mean
of n values is mean +- t_{n-1, (1+c)/2} * s / sqrt(n), with s the sample standard deviation. With a single value
there is no spread to estimate and the interval is unbounded (low = -inf, high = +inf): nothing is resolved.

A paired difference compares two presets seed by seed (same initialisation, data order and sampling), which
removes the noise they share; its interval is the t interval of the per-seed differences.
"""

import math
from dataclasses import asdict, dataclass

from scipy import stats


@dataclass(frozen=True)
class Interval:
    """Mean of `n` values with its `confidence` interval [low, high] and standard error `sem`."""

    mean: float
    low: float
    high: float
    sem: float
    n: int
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def sign(self) -> int:
        """+1 if the whole interval is above 0, -1 if below, 0 if it contains 0 (not resolved)."""
        if self.low > 0:
            return 1
        if self.high < 0:
            return -1
        return 0

    def within(self, tolerance: float) -> bool:
        """True if the whole interval lies in [-tolerance, +tolerance]."""
        return -tolerance <= self.low and self.high <= tolerance

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def t_interval(values, confidence: float = 0.95) -> Interval:
    """The Student-t interval of the mean of `values` (independent draws, e.g. one per seed).

    Args:
        values: the numbers (at least one; NaN is an error, not a missing value).
        confidence (`float`): the level, in (0, 1).
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values must not be empty")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be finite numbers, got {values}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, -math.inf, math.inf, math.inf, 1, confidence)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    sem = sd / math.sqrt(n)
    half = float(stats.t.ppf((1 + confidence) / 2, df=n - 1)) * sem
    return Interval(mean, mean - half, mean + half, sem, n, confidence)


def paired_difference(a: dict, b: dict, confidence: float = 0.95) -> Interval:
    """Interval of the mean of a[s] - b[s] over the keys s (seeds) both have.

    Args:
        a, b (`dict`): seed -> value of the two presets.
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"no seed in common between {sorted(a)} and {sorted(b)}")
    return t_interval([a[s] - b[s] for s in common], confidence)
