"""The paper's claims and their verdicts, decided from intervals across seeds: pure functions over the cells' results.

A cell result (`cells/<preset>/seed<k>/result.json`, see `runner.py`) holds the evaluations before and after RL
(`eval_stage1`, `eval_rl`: results of `trl_shaped.evaluation.evaluate` without the samples) and the GRPO trainer's
`log_history` (`rl`). `metric_values` turns a list of them into metric -> preset -> seed -> value; `judge_claims`
gives each claim a verdict:

- **supported**: every interval the claim needs lies on the side the paper predicts;
- **contradicted**: an interval the claim needs lies wholly on the other side;
- **not resolved at this size**: otherwise (an interval contains 0, or a precondition is not shown);
- **not tested**: a preset the claim is about is not in the study.

The intervals are Student-t intervals across seeds (`stats.py`); differences between presets are paired by seed. A
single run never decides anything: with one seed every interval is unbounded.

"At equal perplexity" (the entropy-order claim) is its own rule: for each preset compared with ce, the interval of
the paired held-out NLL difference must lie within +-`tolerance` x ce's mean NLL. When it does not, the entropy order
is "not resolved" (the presets are not shown to be at equal perplexity), whichever way the entropies go.

The claims are the paper's, about the paper's presets: an extra arm (dft) is left out of every verdict; it appears in
`summarize` (its mean and paired difference to ce) like any preset.

A claim "not resolved" says what would resolve it (`resolution`): the intervals that left it open, each with its
half-width (the smallest difference these seeds resolve) and the seeds that would resolve its observed mean at the
same spread (`stats.seeds_to_resolve`).

`decidability` asks the question before the verdicts: can this task decide the central claim at all? The presets
must move the stage-1 prior, ce's Pass@k after RL must leave room below a ceiling, and RL must learn; a task that
fails one leaves the claim open however many seeds run.
"""

import dataclasses
import math

from .config import ALL_PRESETS, BASELINE
from .stats import Interval, paired_difference, seeds_to_resolve, t_interval

SUPPORTED, CONTRADICTED, NOT_RESOLVED, NOT_TESTED = (
    "supported",
    "contradicted",
    "not resolved at this size",
    "not tested",
)

# metric -> description; the values come from `cell_metrics`.
METRICS = {
    "stage1_nll": "stage-1 held-out NLL (nats/token)",
    "stage1_entropy": "stage-1 held-out entropy (nats/token)",
    "stage1_topk_entropy": "stage-1 held-out top-k entropy (nats/token)",
    "stage1_tail_mass": "stage-1 held-out mass outside the top-k",
    "stage1_avg_at_n": "stage-1 Avg@n",
    "stage1_pass_at_k": "stage-1 Pass@k",
    "rl_avg_at_n": "Avg@n after RL",
    "rl_pass_at_k": "Pass@k after RL",
    "rl_avg_at_n_gain": "Avg@n gain through RL (after RL minus stage 1, same cell)",
    "rl_reward_change": "GRPO reward, end minus start",
    "rl_entropy_change": "GRPO policy entropy, end minus start (nats/token)",
    "rl_length_change": "GRPO completion length, end minus start (tokens)",
}


def start_end(values: list[float]) -> tuple[float, float]:
    """Means of the first and the last quarter of a logged curve (single logs are noisy)."""
    if not values:
        return math.nan, math.nan
    q = max(1, len(values) // 4)
    return sum(values[:q]) / q, sum(values[-q:]) / q


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of `key` in a trainer's `log_history` (entries without it are skipped)."""
    points = [(entry["step"], float(entry[key])) for entry in log_history if key in entry and "step" in entry]
    return [p[0] for p in points], [p[1] for p in points]


def paper_k(evaluation: dict) -> tuple[int, int]:
    """(k, n) of the Pass@k the claims compare: k = n / 2 of the evaluation's own n samples (the paper's Pass@64 of
    128), or the largest logged k below it when the evaluation did not log that one (an evaluation without its n:
    half its largest logged k, which is n by default)."""
    ks = sorted(int(k) for k in evaluation["pass_at_k"])
    n = int(evaluation.get("num_samples") or ks[-1])
    target = max(1, n // 2)
    return max([k for k in ks if k <= target] or ks[:1]), n


def cell_metrics(cell: dict) -> dict[str, float]:
    """The METRICS of one cell result (NaN where the cell did not log the value)."""
    s1, rl = cell["eval_stage1"], cell["eval_rl"]
    diag = s1.get("diagnostics") or {}
    k, _ = paper_k(rl)
    out = {
        "stage1_nll": diag.get("nll", math.nan),
        "stage1_entropy": diag.get("entropy", math.nan),
        "stage1_topk_entropy": diag.get("topk_entropy", math.nan),
        "stage1_tail_mass": diag.get("tail_mass", math.nan),
        "stage1_avg_at_n": s1["avg_at_n"],
        "stage1_pass_at_k": s1["pass_at_k"].get(str(k), math.nan),
        "rl_avg_at_n": rl["avg_at_n"],
        "rl_pass_at_k": rl["pass_at_k"][str(k)],
        "rl_avg_at_n_gain": rl["avg_at_n"] - s1["avg_at_n"],  # paired within the cell: what RL did to this prior
    }
    history = cell["rl"]["log_history"]
    for key, name in (("reward", "reward"), ("entropy", "entropy"), ("completions/mean_length", "length")):
        start, end = start_end(series(history, key)[1])
        out[f"rl_{name}_change"] = end - start
    return out


def metric_values(cells: list[dict]) -> dict[str, dict[str, dict[int, float]]]:
    """metric -> preset -> seed -> value over `cells` (values that are NaN or None are left out)."""
    values = {metric: {} for metric in METRICS}
    for cell in cells:
        for metric, value in cell_metrics(cell).items():
            if value is not None and math.isfinite(value):
                values[metric].setdefault(cell["preset"], {})[int(cell["seed"])] = float(value)
    return values


def summarize(values: dict, confidence: float = 0.95) -> dict:
    """Per metric: the interval of each preset's mean, and of its paired difference to ce (same seeds).

    Returns:
        {"mean": {metric: {preset: Interval}}, "vs_ce": {metric: {preset: Interval}}} (ce itself has no vs_ce entry).
    """
    mean, vs_ce = {}, {}
    for metric, by_preset in values.items():
        mean[metric] = {p: t_interval(list(v.values()), confidence) for p, v in by_preset.items() if v}
        base = by_preset.get(BASELINE)
        vs_ce[metric] = {}
        for p, v in by_preset.items():
            if p != BASELINE and base and set(v) & set(base):
                vs_ce[metric][p] = paired_difference(v, base, confidence)
    return {"mean": mean, "vs_ce": vs_ce}


def _fmt(interval: Interval, scale: float = 1.0) -> str:
    if not math.isfinite(interval.low):
        return f"{scale * interval.mean:+.4g} [unbounded: n={interval.n}]"
    return f"{scale * interval.mean:+.4g} [{scale * interval.low:+.4g}, {scale * interval.high:+.4g}]"


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def resolving_power(name: str, interval: Interval, *, want: int | None = None, bound: float | None = None) -> dict:
    """What the seeds behind `interval` can resolve, and how many seeds would resolve its observed mean.

    Args:
        name (`str`): the interval's label (as in the claim's `intervals`).
        interval (`Interval`): an interval that leaves a claim open.
        want (`int`, *optional*): the test "the interval excludes 0", on the side the paper predicts (+1 above, -1
            below): resolved either way once the half-width is below |mean|.
        bound (`float`, *optional*): instead, the test "the interval lies within +-bound" (the equal-perplexity rule):
            met once the half-width is below bound - |mean|.

    Returns:
        {"interval", "test", "want", "n", "mean", "half_width", "seeds_needed", "note"}: `half_width` is the smallest
        difference these seeds resolve (`None` with one seed); `seeds_needed` the smallest n with
        t_{n-1} * sd / sqrt(n) < margin at the observed sd, or `None` with `note` saying why there is none.
    """
    if (want is None) == (bound is None):
        raise ValueError(f"give exactly one of want (+1 or -1) and bound, got want={want!r}, bound={bound!r}")
    margin = abs(interval.mean) if bound is None else bound - abs(interval.mean)
    seeds, note = None, ""
    if interval.n < 2:
        note = "one seed: no spread to project from"
    elif interval.unsettled:
        note = f"{interval.n} identical values: no spread to project from (a verdict needs 3 seeds)"
    elif bound is None and interval.mean == 0:
        note = "the mean difference is 0: no difference to resolve"
    elif margin <= 0:
        note = f"the mean is outside +-{bound:.4g}: more seeds would not bring the interval within"
    else:
        seeds = seeds_to_resolve(interval.sd, margin, interval.confidence)
        note = "" if seeds is not None else "more than 10^9 seeds at this spread"
    return {
        "interval": name,
        "test": f"{'above' if want == 1 else 'below'} 0" if bound is None else f"within +-{bound:.4g}",
        "want": want,
        "n": interval.n,
        "mean": interval.mean,
        "half_width": _finite_or_none(interval.half_width),
        "seeds_needed": seeds,
        "note": note,
    }


def seeds_for_verdict(entries: list[dict]) -> int | None:
    """Roughly how many seeds give an open claim a verdict, if every mean and spread stayed as observed: every
    "within" test must be met; then the claim is contradicted as soon as one interval resolves against the paper (the
    fewest seeds among those whose mean is on the other side), else supported once all resolve on its side (the most).

    Args:
        entries (`list[dict]`): the `resolving_power` of each interval that leaves the claim open.

    Returns:
        the number of seeds, or `None` when one that matters has none (one seed, a zero mean, an unreachable bound).
    """
    within = [e["seeds_needed"] for e in entries if e["want"] is None]
    sided = [e for e in entries if e["want"] is not None]
    against = [e["seeds_needed"] for e in sided if e["mean"] * e["want"] < 0]
    if against:
        reachable = [n for n in against if n is not None]
        parts = within + [min(reachable) if reachable else None]
    else:
        parts = within + [e["seeds_needed"] for e in sided]
    return max(parts) if parts and None not in parts else None


def _claim(cid: str, text: str, verdict: str, evidence: str, intervals: dict, open_by=(), scale=1.0) -> dict:
    """A claim's record. `open_by`: (label, keyword arguments of `resolving_power`) of each interval that leaves it
    not resolved; `scale` the factor the report shows them with (100: points of a rate)."""
    claim = {
        "id": cid,
        "claim": text,
        "verdict": verdict,
        "evidence": evidence,
        "intervals": {k: v.to_dict() for k, v in intervals.items()},
    }
    if verdict == NOT_RESOLVED:
        entries = [resolving_power(label, intervals[label], **test) for label, test in open_by]
        claim["resolution"] = {"open_by": entries, "seeds_needed": seeds_for_verdict(entries), "scale": scale}
    return claim


def why_not_judged(values: dict, metric: str, presets: list[str]) -> str:
    """Why a claim over `metric` for `presets` cannot be judged from `values`: a preset not in the study, no held-out
    diagnostics, or no seed where the presets have all finished."""
    every = {p for by in values.values() for p in by}
    absent = [p for p in presets if p not in every]
    if absent:
        return f"needs the {' and '.join(absent)} preset{'s' if len(absent) > 1 else ''}"
    if metric.startswith("stage1_") and metric not in ("stage1_avg_at_n", "stage1_pass_at_k") and not values[metric]:
        return "needs held-out diagnostics (the evaluations logged none: a dataset without a completion column)"
    if not values[metric]:
        return f"needs {METRICS[metric]} (not logged)"
    return (
        f"needs {' and '.join(presets)} at a common seed (finished so far: "
        + "; ".join(f"{p} {sorted(values[metric].get(p, {})) or 'none'}" for p in presets)
        + ")"
    )


def _directional(cid, text, interval: Interval | None, want: int, label: str, missing: str) -> dict:
    """A claim that one interval lies above (`want=+1`) or below (`want=-1`) zero (`missing`: why it cannot be
    judged, when `interval` is None)."""
    if interval is None:
        return _claim(cid, text, NOT_TESTED, missing, {})
    sign = interval.sign()
    verdict = SUPPORTED if sign == want else CONTRADICTED if sign == -want else NOT_RESOLVED
    return _claim(cid, text, verdict, f"{label}: {_fmt(interval)}", {label: interval}, [(label, {"want": want})])


def judge_claims(values: dict, confidence: float = 0.95, tolerance: float = 0.05) -> list[dict]:
    """The verdict of every claim of the paper from `metric_values(cells)`.

    Args:
        values (`dict`): metric -> preset -> seed -> value.
        confidence (`float`): level of the intervals.
        tolerance (`float`): the equal-perplexity rule (see the module docstring).

    Returns:
        a list of {"id", "claim", "verdict", "evidence", "intervals"} in the paper's order, with "resolution" (see
        `_claim`) when the verdict is "not resolved".
    """
    # the paper's claims are about the paper's presets: other arms (dft) stay out of the verdicts
    values = {metric: {p: v for p, v in by.items() if p in ALL_PRESETS} for metric, by in values.items()}
    presets = set(values["stage1_entropy"]) | set(values["rl_pass_at_k"])

    def diff(metric, a, b=BASELINE):
        va, vb = values[metric].get(a), values[metric].get(b)
        if not va or not vb or not set(va) & set(vb):
            return None
        return paired_difference(va, vb, confidence)

    claims = []
    # 1. Stage-1 entropy order at equal perplexity.
    text = "Stage 1: held-out entropy orders precision < ce < diversity at equal perplexity"
    d_prec, d_div = diff("stage1_entropy", "precision"), diff("stage1_entropy", "diversity")
    n_prec, n_div = diff("stage1_nll", "precision"), diff("stage1_nll", "diversity")
    if not {"precision", "diversity", BASELINE} <= presets:
        claims.append(_claim("entropy_order", text, NOT_TESTED, "needs the ce, precision and diversity presets", {}))
    elif None in (d_prec, d_div, n_prec, n_div):
        metric = "stage1_entropy" if None in (d_prec, d_div) else "stage1_nll"
        why = why_not_judged(values, metric, [BASELINE, "precision", "diversity"])
        claims.append(_claim("entropy_order", text, NOT_TESTED, why, {}))
    else:
        bound = tolerance * t_interval(list(values["stage1_nll"][BASELINE].values())).mean
        equal = n_prec.within(bound) and n_div.within(bound)
        intervals = {
            "entropy precision - ce": d_prec,
            "entropy diversity - ce": d_div,
            "nll precision - ce": n_prec,
            "nll diversity - ce": n_div,
        }
        evidence = "; ".join(f"{k}: {_fmt(v)}" for k, v in intervals.items())
        evidence += f"; equal perplexity needs each NLL interval within +-{bound:.4g}"
        wrong_side = d_prec.sign() == 1 or d_div.sign() == -1
        # what leaves it open: NLL intervals not within the bound, and (unless an entropy is already on the wrong
        # side) entropy intervals that contain 0
        open_by = [
            (k, {"bound": bound})
            for k in ("nll precision - ce", "nll diversity - ce")
            if not intervals[k].within(bound)
        ]
        if not wrong_side:
            open_by += [
                (k, {"want": want})
                for k, want in (("entropy precision - ce", -1), ("entropy diversity - ce", 1))
                if not intervals[k].sign()
            ]
        if not equal:
            verdict = NOT_RESOLVED
            evidence += " (not met: the presets are not shown to be at equal perplexity)"
        elif d_prec.sign() == -1 and d_div.sign() == 1:
            verdict = SUPPORTED
        elif wrong_side:
            verdict = CONTRADICTED
        else:
            verdict = NOT_RESOLVED
        claims.append(_claim("entropy_order", text, verdict, evidence, intervals, open_by))
    # 2-3. The rank-aware presets do what they are for.
    claims.append(
        _directional(
            "tail_penalty_tail_mass",
            "Stage 1: tail_penalty lowers the mass outside the top-k (vs ce)",
            diff("stage1_tail_mass", "tail_penalty"),
            -1,
            "tail mass tail_penalty - ce",
            why_not_judged(values, "stage1_tail_mass", [BASELINE, "tail_penalty"]),
        )
    )
    claims.append(
        _directional(
            "head_reward_topk_entropy",
            "Stage 1: head_reward raises the entropy within the top-k (vs ce)",
            diff("stage1_topk_entropy", "head_reward"),
            1,
            "top-k entropy head_reward - ce",
            why_not_judged(values, "stage1_topk_entropy", [BASELINE, "head_reward"]),
        )
    )
    # 4. The precision prior gives the best Pass@k after RL: above every other preset, paired by seed.
    text = "After RL: the precision prior gives the best Pass@k"
    others = sorted(p for p in values["rl_pass_at_k"] if p != "precision")
    paired = {q: diff("rl_pass_at_k", "precision", q) for q in others}
    if "precision" not in values["rl_pass_at_k"] or not others:
        claims.append(_claim("precision_best_pass_at_k", text, NOT_TESTED, "needs precision and another preset", {}))
    elif None in paired.values():
        unpaired = [q for q, v in paired.items() if v is None]
        why = why_not_judged(values, "rl_pass_at_k", ["precision", *unpaired])
        claims.append(_claim("precision_best_pass_at_k", text, NOT_TESTED, why, {}))
    else:
        intervals = {f"Pass@k precision - {q}": v for q, v in paired.items()}
        signs = [v.sign() for v in intervals.values()]
        verdict = SUPPORTED if all(s == 1 for s in signs) else CONTRADICTED if -1 in signs else NOT_RESOLVED
        evidence = "; ".join(f"{k}: {_fmt(v, 100)} points" for k, v in intervals.items())
        open_by = [(k, {"want": 1}) for k, v in intervals.items() if not v.sign()]
        claims.append(_claim("precision_best_pass_at_k", text, verdict, evidence, intervals, open_by, scale=100))
    # 5. Entropy falls under RL, for every prior.
    text = "Under RL: the policy entropy falls (every prior)"
    change = values["rl_entropy_change"]
    if not change:
        claims.append(_claim("rl_entropy_falls", text, NOT_TESTED, "no entropy logged during GRPO", {}))
    else:
        intervals = {f"entropy change {p}": t_interval(list(v.values()), confidence) for p, v in change.items()}
        signs = [v.sign() for v in intervals.values()]
        verdict = SUPPORTED if all(s == -1 for s in signs) else CONTRADICTED if 1 in signs else NOT_RESOLVED
        evidence = "; ".join(f"{k}: {_fmt(v)}" for k, v in intervals.items())
        open_by = [(k, {"want": -1}) for k, v in intervals.items() if not v.sign()]
        claims.append(_claim("rl_entropy_falls", text, verdict, evidence, intervals, open_by))
    # 6. The high-entropy prior shortens its responses under RL.
    length = values["rl_length_change"].get("diversity")
    claims.append(
        _directional(
            "rl_high_entropy_length_shortens",
            "Under RL: the high-entropy (diversity) prior shortens its responses",
            t_interval(list(length.values()), confidence) if length else None,
            -1,
            "length change diversity (tokens)",
            "needs the diversity preset and logged completion lengths",
        )
    )
    return claims


# The Pass@k after RL above which a task leaves a better prior too little room to show: ce must stay below it.
PASS_AT_K_CEILING = 0.90
HOLDS, HOLDS_IN_MEANS, FAILS = "holds", "holds in the means, not resolved", "fails"


def _check(cid: str, text: str, interval: Interval | None, want: int, label: str, missing: str, scale=1.0,
           threshold: float = 0.0) -> dict:  # fmt: skip
    """One precondition: `interval` lies above (`want=+1`) or below (`want=-1`) `threshold`; its mean alone on that
    side is "holds in the means", the mean on the other side (or at it) "fails"."""
    if interval is None:
        return {"id": cid, "check": text, "status": NOT_TESTED, "evidence": missing}
    shifted = dataclasses.replace(
        interval, mean=interval.mean - threshold, low=interval.low - threshold, high=interval.high - threshold
    )
    status = HOLDS if shifted.sign() == want else HOLDS_IN_MEANS if shifted.mean * want > 0 else FAILS
    shown = _fmt(interval, scale)
    if threshold:  # a level, not a difference: no sign
        shown = shown.replace("+", "")
    return {"id": cid, "check": text, "status": status, "evidence": f"{label}: {shown}"}


def decidability(values: dict, confidence: float = 0.95, ceiling: float = PASS_AT_K_CEILING) -> list[dict]:
    """Can this study's task decide the central claim ("the precision prior gives the best Pass@k after RL")? Three
    preconditions, each from the same intervals as the claims:

    - the presets move the stage-1 distribution: held-out entropy precision < ce and diversity > ce (paired);
    - a better prior has room to show: ce's Pass@k after RL below `ceiling`;
    - RL learns from the prior: ce's Avg@n gain through RL above 0.

    A task that fails one cannot decide the claim whatever the number of seeds (all priors saturate, or the shaping
    does not move the prior); one that holds them only in the means needs more seeds to show it.

    Returns:
        a list of {"id", "check", "status", "evidence"}: status "holds" (the interval is on the side), "holds in the
        means, not resolved", "fails" (the mean is on the wrong side) or "not tested" (a preset or metric missing).
    """

    def diff(metric, preset):
        a, b = values[metric].get(preset), values[metric].get(BASELINE)
        return paired_difference(a, b, confidence) if a and b and set(a) & set(b) else None

    def ce(metric):
        seeds = values[metric].get(BASELINE)
        return t_interval(list(seeds.values()), confidence) if seeds else None

    return [
        _check("prior_moves_precision", "Stage 1: precision lowers the held-out entropy (vs ce)",
               diff("stage1_entropy", "precision"), -1, "entropy precision - ce",
               why_not_judged(values, "stage1_entropy", [BASELINE, "precision"])),
        _check("prior_moves_diversity", "Stage 1: diversity raises the held-out entropy (vs ce)",
               diff("stage1_entropy", "diversity"), 1, "entropy diversity - ce",
               why_not_judged(values, "stage1_entropy", [BASELINE, "diversity"])),
        _check("room_below_ceiling", f"After RL: ce's Pass@k stays below {100 * ceiling:.0f}%",
               ce("rl_pass_at_k"), -1, "ce Pass@k after RL (%)", why_not_judged(values, "rl_pass_at_k", [BASELINE]),
               scale=100, threshold=ceiling),
        _check("rl_learns", "RL raises ce's Avg@n", ce("rl_avg_at_n_gain"), 1, "ce Avg@n gain through RL (points)",
               why_not_judged(values, "rl_avg_at_n_gain", [BASELINE]), scale=100),
    ]  # fmt: skip
