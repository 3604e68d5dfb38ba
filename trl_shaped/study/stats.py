"""Intervals across seeds and paired differences (Student t), as plain functions over lists of numbers.

A study has a handful of seeds per preset, so the normal quantile would be far too narrow: the interval of the mean
of n values is mean +- t_{n-1, (1+c)/2} * s / sqrt(n), with s the sample standard deviation. With a single value
there is no spread to estimate and the interval is unbounded (low = -inf, high = +inf): nothing is resolved.

A paired difference compares two presets seed by seed (same initialisation, data order and sampling), which
removes the noise they share; its interval is the t interval of the per-seed differences.

What a size can resolve: an interval's half-width is the smallest difference its seeds can tell from 0, and
`seeds_to_resolve` is the number of seeds at which, with the same spread, a given difference would be resolved.
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
        """The smallest difference from 0 this interval can resolve (inf with one value)."""
        return (self.high - self.low) / 2

    @property
    def sd(self) -> float:
        """The standard deviation of the values (inf with one value)."""
        return self.sem * math.sqrt(self.n)

    @property
    def unsettled(self) -> bool:
        """Identical values from fewer than 3 draws: a zero-width interval that shows no spread, not a certainty (two
        seeds that agree to the last digit say nothing of a third)."""
        return self.n < 3 and self.sem <= 1e-9 * abs(self.mean)  # zero up to the rounding of a difference

    def sign(self) -> int:
        """+1 if the whole interval is above 0, -1 if below, 0 if it contains 0 or is `unsettled` (not resolved)."""
        if self.unsettled:
            return 0
        if self.low > 0:
            return 1
        if self.high < 0:
            return -1
        return 0

    def within(self, tolerance: float) -> bool:
        """True if the whole interval lies in [-tolerance, +tolerance] (never when `unsettled`)."""
        return not self.unsettled and -tolerance <= self.low and self.high <= tolerance

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def t_quantile(n: int, confidence: float = 0.95) -> float:
    """The Student-t quantile t_{n-1, (1+confidence)/2}: an interval of the mean of `n` values is mean +- this many
    standard errors.

    Args:
        n (`int`): the number of values, at least 2.
        confidence (`float`): the level, in (0, 1).
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 (one value has no spread), got {n}")
    return float(stats.t.ppf((1 + confidence) / 2, df=n - 1))


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
    sem = float(stats.sem(values))
    if sem == 0:  # identical values: scipy's scale must be > 0, the interval is the point itself
        return Interval(mean, mean, mean, 0.0, n, confidence)
    low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high), sem, n, confidence)


def seeds_to_resolve(sd: float, margin: float, confidence: float = 0.95, max_seeds: int = 10**9) -> int | None:
    """The smallest number of seeds n >= 2 with t_{n-1, (1+confidence)/2} * sd / sqrt(n) < margin: how many seeds an
    interval needs, at the spread `sd` of its per-seed values, for its half-width to fall below `margin`.

    For "is the difference d nonzero" the margin is |d|; for "does the difference lie within +-b" it is b - |d|.

    Args:
        sd (`float`): the standard deviation of the per-seed values (finite, >= 0).
        margin (`float`): the half-width to get below.
        confidence (`float`): the level of the interval, in (0, 1).
        max_seeds (`int`): the largest count searched.

    Returns:
        n, or `None` when no number of seeds can do it (margin <= 0) or it would take more than `max_seeds`.
    """
    if not (math.isfinite(sd) and sd >= 0):
        raise ValueError(f"sd must be a finite number >= 0, got {sd}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not margin > 0:
        return None

    def resolves(n: int) -> bool:
        return t_quantile(n, confidence) * sd / math.sqrt(n) < margin

    if not resolves(max_seeds):
        return None
    # the half-width falls monotonically with n: double up to a resolving n, then bisect
    low, high = 1, 2
    while not resolves(high):
        low, high = high, min(2 * high, max_seeds)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if resolves(mid) else (mid, high)
    return high


def paired_difference(a: dict, b: dict, confidence: float = 0.95) -> Interval:
    """Interval of the mean of a[s] - b[s] over the keys s (seeds) both have.

    Args:
        a, b (`dict`): seed -> value of the two presets.
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"no seed in common between {sorted(a)} and {sorted(b)}")
    return t_interval([a[s] - b[s] for s in common], confidence)
