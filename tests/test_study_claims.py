"""Verdicts, figures and the report from a FIXTURE of cell results (no training): supported, contradicted, not
resolved and not tested cases, each decided from the intervals across seeds."""

import json
import math
import random
import statistics

import pytest
from scipy import stats

from trl_shaped.study.claims import (
    CONTRADICTED,
    FAILS,
    HOLDS,
    HOLDS_IN_MEANS,
    NOT_RESOLVED,
    NOT_TESTED,
    SUPPORTED,
    cell_metrics,
    decidability,
    judge_claims,
    metric_values,
    paper_k,
    resolving_power,
    seeds_for_verdict,
    start_end,
    summarize,
)
from trl_shaped.study.config import StudyConfig
from trl_shaped.study.figures import write_figures
from trl_shaped.study.report import render_markdown
from trl_shaped.study.runner import build_results
from trl_shaped.study.stats import t_interval

SEEDS = range(4)


def make_cell(preset, seed, *, entropy, nll, tail_mass=0.1, topk_entropy=1.0, pass_rl=0.5, rl_entropy=(1.0, 0.8),
              rl_length=(20.0, 18.0)):  # fmt: skip
    """One cell result with chosen numbers (the shape `runner.run_cell` returns)."""
    evaluation = {"num_samples": 8, "avg_at_n": 0.3, "pass_at_k": {"1": 0.3, "2": 0.4, "4": 0.5, "8": 0.6}}
    steps = 8
    history = [
        {
            "step": i + 1,
            "reward": 0.2 + 0.01 * i,
            "entropy": rl_entropy[0] + (rl_entropy[1] - rl_entropy[0]) * i / (steps - 1),
            "completions/mean_length": rl_length[0] + (rl_length[1] - rl_length[0]) * i / (steps - 1),
        }
        for i in range(steps)
    ]
    diagnostics = {"nll": nll, "entropy": entropy, "topk_entropy": topk_entropy, "tail_mass": tail_mass}
    return {
        "preset": preset,
        "seed": seed,
        "stage1": {"seconds": 1.0, "log_history": []},
        "eval_stage1": {**evaluation, "diagnostics": diagnostics},
        "rl": {"seconds": 1.0, "log_history": history},
        "eval_rl": {**evaluation, "pass_at_k": {**evaluation["pass_at_k"], "4": pass_rl}},
    }


def paper_like(noise=0.002, gap=0.05, nll_gap=0.0, sign=1, seed=0):
    """Five presets x four seeds whose numbers follow the paper (sign=1) or its opposite (sign=-1)."""
    rng = random.Random(seed)
    cells = []
    for s in SEEDS:
        shared = rng.gauss(0, 0.05)  # a seed effect shared by every preset: pairing removes it
        for preset, e, t, k, p in (
            ("ce", 0, 0, 0, 0),
            ("precision", -1, 0, 0, 1),
            ("diversity", 1, 0, 0, -1),
            ("tail_penalty", 0, -1, 0, 0),
            ("head_reward", 0, 0, 1, 0),
        ):
            cells.append(
                make_cell(
                    preset,
                    s,
                    entropy=1.0 + shared + sign * e * gap + rng.gauss(0, noise),
                    nll=0.5 + shared / 10 + (nll_gap if preset != "ce" else 0) + rng.gauss(0, noise / 10),
                    tail_mass=0.2 + shared / 10 + sign * t * gap + rng.gauss(0, noise),
                    topk_entropy=0.8 + shared + sign * k * gap + rng.gauss(0, noise),
                    pass_rl=0.5 + shared / 10 + sign * p * gap + rng.gauss(0, noise),
                    rl_entropy=(1.0, 1.0 - sign * gap + rng.gauss(0, noise)),
                    rl_length=(20.0, 20.0 - sign * 3 + rng.gauss(0, 0.1)),
                )
            )
    return cells


def verdicts(cells, **kwargs):
    return {c["id"]: c["verdict"] for c in judge_claims(metric_values(cells), **kwargs)}


def test_metrics_of_a_cell():
    cell = make_cell("ce", 0, entropy=1.2, nll=0.4, pass_rl=0.7, rl_entropy=(1.0, 0.6))
    metrics = cell_metrics(cell)
    assert metrics["stage1_entropy"] == 1.2 and metrics["stage1_nll"] == 0.4
    assert metrics["rl_pass_at_k"] == 0.7  # k = 4, the largest k <= n/2 of n = 8
    entropies = [e["entropy"] for e in cell["rl"]["log_history"]]
    assert metrics["rl_entropy_change"] == pytest.approx(start_end(entropies)[1] - start_end(entropies)[0])
    assert metrics["rl_entropy_change"] < 0


def test_paper_like_numbers_are_supported():
    assert set(verdicts(paper_like()).values()) == {SUPPORTED}


def test_opposite_numbers_are_contradicted():
    assert set(verdicts(paper_like(sign=-1)).values()) == {CONTRADICTED}


def test_noise_larger_than_the_effect_is_not_resolved():
    result = verdicts(paper_like(noise=0.2, gap=0.01))
    assert result["entropy_order"] == NOT_RESOLVED
    assert result["tail_penalty_tail_mass"] == NOT_RESOLVED
    assert result["precision_best_pass_at_k"] == NOT_RESOLVED


def test_entropy_order_needs_equal_perplexity():
    # the entropy order is clear, but every preset's NLL is 10% above ce's: not at equal perplexity
    claims = judge_claims(metric_values(paper_like(nll_gap=0.05)), tolerance=0.05)
    order = next(c for c in claims if c["id"] == "entropy_order")
    assert order["verdict"] == NOT_RESOLVED and "not shown to be at equal perplexity" in order["evidence"]
    # a looser tolerance accepts the same numbers
    assert verdicts(paper_like(nll_gap=0.05), tolerance=0.2)["entropy_order"] == SUPPORTED


def test_a_single_seed_decides_nothing_and_missing_presets_are_not_tested():
    one_seed = [c for c in paper_like() if c["seed"] == 0]
    assert set(verdicts(one_seed).values()) == {NOT_RESOLVED}
    only_ce = [c for c in paper_like() if c["preset"] == "ce"]
    result = verdicts(only_ce)
    assert result["entropy_order"] == NOT_TESTED and result["precision_best_pass_at_k"] == NOT_TESTED
    assert result["rl_entropy_falls"] == SUPPORTED  # about every preset run: ce's entropy falls


def test_report_figures_and_json_from_the_fixture(tmp_path):
    cells = paper_like(noise=0.2, gap=0.01, seed=3)  # mostly not resolved
    config = StudyConfig(presets="all", num_seeds=len(SEEDS), output_dir=str(tmp_path))
    env = {
        "python": "3", "torch": "t", "transformers": "x", "trl": "y", "blas": ["BLAS_INFO=open"],
        "cell_threads": 1, "thread_env": {}, "platform": "p", "cpu_count": 2, "cuda": False,
        "load_average_before": [0.5, 0, 0], "load_average_after": [1.0, 0, 0],
    }  # fmt: skip
    results = build_results(config, cells, 12.0, env)
    figures = write_figures(tmp_path, cells)
    text = render_markdown(results, figures)
    # the report leads with the verdict table, one row per claim, with the verdict the claims module gave
    lines = text.splitlines()
    table_start = lines.index("## Verdicts")
    assert all(not line.startswith("## ") for line in lines[1:table_start])
    for claim in results["claims"]:
        assert f"| {claim['claim']} | **{claim['verdict']}** |" in text
    # then whether the task can decide the central claim at all, one row per precondition
    assert lines.index("## Can this task decide the central claim?") > table_start
    for check in results["decidability"]:
        assert f"| {check['check']} | **{check['status']}** |" in text
    assert "Not resolved: *Stage 1: tail_penalty lowers" in text
    assert "BLAS_INFO=open" in text
    # every plotted number is in figures.json: the stage-1 means are the means over the seeds
    saved = json.loads(figures["json"].read_text())
    ce_entropy = [c["eval_stage1"]["diagnostics"]["entropy"] for c in cells if c["preset"] == "ce"]
    assert saved["stage1"]["ce"]["entropy"]["mean"] == pytest.approx(sum(ce_entropy) / len(ce_entropy))
    assert saved["stage1"]["ce"]["entropy"]["values"] == ce_entropy
    rl_steps = saved["rl_curves"]["precision"]["entropy"]
    assert list(rl_steps) == [str(i) for i in range(1, 9)]
    for name in ("stage1", "pass_at_k", "rl_curves"):
        assert figures[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # results.json's intervals are those of the values it lists
    values = results["values"]["stage1_entropy"]["ce"]
    assert results["presets"]["ce"]["stage1_entropy"]["mean"] == pytest.approx(sum(values.values()) / len(values))


def test_figure_paired_differences_by_hand(tmp_path):
    cells = paper_like(seed=5)
    saved = json.loads(write_figures(tmp_path, cells)["json"].read_text())
    ce = {c["seed"]: c["eval_stage1"]["diagnostics"]["entropy"] for c in cells if c["preset"] == "ce"}
    precision = {c["seed"]: c["eval_stage1"]["diagnostics"]["entropy"] for c in cells if c["preset"] == "precision"}
    diffs = [precision[s] - ce[s] for s in sorted(ce)]
    band = saved["stage1_vs_ce"]["precision"]["entropy"]
    assert band["values"] == pytest.approx(diffs)
    assert band["mean"] == pytest.approx(sum(diffs) / len(diffs))
    assert band["high"] < 0  # the paper-like fixture's precision entropy is below ce's on every seed
    assert "ce" not in saved["stage1_vs_ce"]


def _half_width_and_seeds_by_hand(diffs, margin, confidence=0.95):
    """The t interval's half-width of `diffs` and the first n whose half-width at their sd is below `margin`,
    one n at a time."""
    sd = statistics.stdev(diffs)
    quantile = lambda n: stats.t.ppf((1 + confidence) / 2, n - 1)  # noqa: E731
    n = 2
    while quantile(n) * sd / math.sqrt(n) >= margin:
        n += 1
    return quantile(len(diffs)) * sd / math.sqrt(len(diffs)), n


def _per_seed(cells, preset, read):
    return {c["seed"]: read(c) for c in cells if c["preset"] == preset}


def test_an_unresolved_claim_says_its_half_width_and_the_seeds_that_would_resolve_it():
    cells = paper_like(noise=0.2, gap=0.01, seed=3)
    claims = {c["id"]: c for c in judge_claims(metric_values(cells))}
    claim = claims["tail_penalty_tail_mass"]
    assert claim["verdict"] == NOT_RESOLVED
    (entry,) = claim["resolution"]["open_by"]
    tail = lambda c: c["eval_stage1"]["diagnostics"]["tail_mass"]  # noqa: E731
    ce, tp = _per_seed(cells, "ce", tail), _per_seed(cells, "tail_penalty", tail)
    diffs = [tp[s] - ce[s] for s in SEEDS]
    half, seeds = _half_width_and_seeds_by_hand(diffs, abs(statistics.mean(diffs)))
    assert entry["interval"] == "tail mass tail_penalty - ce" and entry["want"] == -1 and entry["n"] == len(SEEDS)
    assert entry["mean"] == pytest.approx(statistics.mean(diffs))
    assert entry["half_width"] == pytest.approx(half, rel=1e-9)
    assert entry["seeds_needed"] == seeds > len(SEEDS)  # open now, so more seeds than ran
    assert claim["resolution"]["seeds_needed"] == seeds


def test_a_claim_over_several_differences_names_those_that_left_it_open():
    cells = paper_like(noise=0.2, gap=0.01, seed=3)
    claim = next(c for c in judge_claims(metric_values(cells)) if c["id"] == "precision_best_pass_at_k")
    assert claim["verdict"] == NOT_RESOLVED and claim["resolution"]["scale"] == 100
    containing_zero = [k for k, v in claim["intervals"].items() if v["low"] <= 0 <= v["high"]]
    entries = claim["resolution"]["open_by"]
    assert [e["interval"] for e in entries] == containing_zero and len(entries) > 1
    rl_pass = lambda c: c["eval_rl"]["pass_at_k"]["4"]  # noqa: E731
    precision = _per_seed(cells, "precision", rl_pass)
    for entry in entries:
        other = _per_seed(cells, entry["interval"].split(" - ")[1], rl_pass)
        diffs = [precision[s] - other[s] for s in SEEDS]
        half, seeds = _half_width_and_seeds_by_hand(diffs, abs(statistics.mean(diffs)))
        assert entry["half_width"] == pytest.approx(half, rel=1e-9) and entry["seeds_needed"] == seeds
    # the paper wants every difference above 0: one below 0 contradicts the claim once it resolves (the fewest seeds
    # among those), else all must resolve (the most)
    against = [e["seeds_needed"] for e in entries if e["mean"] < 0]
    expected = min(against) if against else max(e["seeds_needed"] for e in entries)
    assert claim["resolution"]["seeds_needed"] == expected


def test_seeds_for_a_verdict_combine_the_open_intervals():
    def entry(mean, seeds, want=1):
        return {"mean": mean, "seeds_needed": seeds, "want": want}

    assert seeds_for_verdict([entry(0.1, 9), entry(0.2, 30)]) == 30  # supported needs both
    assert seeds_for_verdict([entry(0.1, 9), entry(-0.2, 30), entry(-0.3, 12)]) == 12  # the first contradiction
    assert seeds_for_verdict([entry(0.1, 9), entry(0.0, None)]) is None  # a zero mean never resolves
    assert seeds_for_verdict([entry(0.01, 40, None), entry(-0.2, 5)]) == 40  # equal perplexity must be shown first
    assert seeds_for_verdict([entry(0.01, None, None), entry(0.2, 5)]) is None


def test_equal_perplexity_is_resolved_within_the_bound():
    nll = t_interval([0.012, -0.004, 0.02, 0.001])
    bound = 0.03
    entry = resolving_power("nll precision - ce", nll, bound=bound)
    diffs = [0.012, -0.004, 0.02, 0.001]
    half, seeds = _half_width_and_seeds_by_hand(diffs, bound - abs(statistics.mean(diffs)))
    assert entry["test"] == "within +-0.03" and entry["want"] is None
    assert entry["half_width"] == pytest.approx(half) and entry["seeds_needed"] == seeds
    # a mean outside the bound: no number of seeds brings the interval within
    outside = resolving_power("nll", t_interval([0.04, 0.05, 0.045]), bound=bound)
    assert outside["seeds_needed"] is None and "outside" in outside["note"]
    # the paper-like fixture with every NLL 0.05 above ce's (bound 5% of 0.5): that is what leaves the order open
    order = next(c for c in judge_claims(metric_values(paper_like(nll_gap=0.05))) if c["id"] == "entropy_order")
    assert [e["interval"] for e in order["resolution"]["open_by"]] == ["nll precision - ce", "nll diversity - ce"]
    assert order["resolution"]["seeds_needed"] is None
    with pytest.raises(ValueError, match="exactly one"):
        resolving_power("x", nll)


def test_one_seed_or_no_difference_has_no_seed_count():
    one = resolving_power("x", t_interval([0.3]), want=1)
    assert one["half_width"] is None and one["seeds_needed"] is None and "one seed" in one["note"]
    zero = resolving_power("x", t_interval([0.1, -0.1, 0.0]), want=1)
    assert zero["seeds_needed"] is None and "no difference to resolve" in zero["note"]
    one_seed = [c for c in paper_like() if c["seed"] == 0]
    for claim in judge_claims(metric_values(one_seed)):
        assert claim["resolution"]["seeds_needed"] is None
        assert all(e["half_width"] is None for e in claim["resolution"]["open_by"])


def with_dft(cells, pass_rl=0.95, entropy_shift=0.3):
    """`cells` plus a dft arm: ce's numbers with a much higher Pass@k after RL and a higher stage-1 entropy."""
    extra = []
    for c in cells:
        if c["preset"] == "ce":
            d = json.loads(json.dumps(c))
            d["preset"] = "dft"
            d["eval_rl"]["pass_at_k"]["4"] = pass_rl
            d["eval_stage1"]["diagnostics"]["entropy"] += entropy_shift
            extra.append(d)
    return cells + extra


def test_dft_appears_in_the_tables_but_not_in_the_papers_claims(tmp_path):
    cells = paper_like()
    # dft's Pass@k is far above precision's: were it among the "other presets", the claim would be contradicted
    assert verdicts(with_dft(cells)) == verdicts(cells) and set(verdicts(cells).values()) == {SUPPORTED}
    values = metric_values(with_dft(cells))
    summary = summarize(values)
    dft_entropy = _per_seed(with_dft(cells), "dft", lambda c: c["eval_stage1"]["diagnostics"]["entropy"])
    ce_entropy = _per_seed(cells, "ce", lambda c: c["eval_stage1"]["diagnostics"]["entropy"])
    assert summary["vs_ce"]["stage1_entropy"]["dft"].mean == pytest.approx(
        statistics.mean(dft_entropy[s] - ce_entropy[s] for s in SEEDS)
    )
    config = StudyConfig(presets="ce,precision,diversity,tail_penalty,head_reward,dft", num_seeds=len(SEEDS))
    env = {
        "python": "3", "torch": "t", "transformers": "x", "trl": "y", "blas": [], "cell_threads": 1, "thread_env": {},
        "platform": "p", "cpu_count": 2, "cuda": False, "load_average_before": None, "load_average_after": [1.0, 0, 0],
    }  # fmt: skip
    results = build_results(config, with_dft(cells), 1.0, env)
    assert results["vs_ce"]["rl_pass_at_k"]["dft"]["mean"] == pytest.approx(0.95 - 0.5, abs=0.05)
    figures = write_figures(tmp_path, with_dft(cells))
    saved = json.loads(figures["json"].read_text())
    assert list(saved["stage1"]) == ["ce", "precision", "diversity", "tail_penalty", "head_reward", "dft"]
    assert "dft" in saved["stage1_vs_ce"]
    text = render_markdown(results, figures)
    assert "| stage-1 held-out entropy (nats/token) | dft |" in text
    assert "6 presets (ce, precision, diversity, tail_penalty, head_reward, dft), 4 seeds finished of 4 asked" in text
    assert "dft (TRL's DFT loss: cross-entropy weighted by the detached target probability) is not one of" in text


def test_the_report_states_what_results_json_says_for_each_open_claim(tmp_path):
    cells = paper_like(noise=0.2, gap=0.01, seed=3)
    config = StudyConfig(presets="all", num_seeds=len(SEEDS), output_dir=str(tmp_path))
    env = {
        "python": "3", "torch": "t", "transformers": "x", "trl": "y", "blas": [], "cell_threads": 1, "thread_env": {},
        "platform": "p", "cpu_count": 2, "cuda": False, "load_average_before": None, "load_average_after": [1.0, 0, 0],
    }  # fmt: skip
    results = json.loads(json.dumps(build_results(config, cells, 1.0, env)))  # as results.json holds it
    text = render_markdown(results, write_figures(tmp_path, cells))
    section = text.split("## What this size can and cannot resolve")[1].split("## Every metric")[0]
    open_claims = [c for c in results["claims"] if c["verdict"] == NOT_RESOLVED]
    assert open_claims
    for claim in open_claims:
        assert f"Not resolved: *{claim['claim']}*" in section
        scale = claim["resolution"]["scale"]
        for entry in claim["resolution"]["open_by"]:
            (line,) = [line for line in section.splitlines() if f"`{entry['interval']}`" in line]
            assert f"{scale * entry['half_width']:.3g}" in line
            assert f"about {entry['seeds_needed']}" in line


def test_the_rl_gain_is_each_cells_own_after_minus_before():
    cells = []
    for seed, (before, after) in enumerate([(0.25, 0.45), (0.30, 0.40), (0.20, 0.41)]):
        cell = make_cell("ce", seed, entropy=1.0, nll=1.0)
        cell["eval_stage1"]["avg_at_n"], cell["eval_rl"]["avg_at_n"] = before, after
        cells.append(cell)
    gains = metric_values(cells)["rl_avg_at_n_gain"]["ce"]
    assert gains == pytest.approx({0: 0.20, 1: 0.10, 2: 0.21})
    interval = summarize(metric_values(cells))["mean"]["rl_avg_at_n_gain"]["ce"]
    mean, sd = statistics.mean(gains.values()), statistics.stdev(gains.values())
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)  # the paired interval, computed independently
    assert interval.low == pytest.approx(mean - half) and interval.high == pytest.approx(mean + half)


ENV = {
    "python": "3", "torch": "t", "transformers": "x", "trl": "y", "blas": [], "cell_threads": 1, "thread_env": {},
    "platform": "p", "cpu_count": 2, "cuda": False, "load_average_before": None, "load_average_after": [1.0, 0, 0],
}  # fmt: skip


def _report(cells, tmp_path, **config):
    config = StudyConfig(**{"presets": "all", "num_seeds": len(SEEDS)} | config)
    results = build_results(config, cells, 1.0, ENV)
    return results, render_markdown(results, write_figures(tmp_path, cells))


def test_claims_and_report_of_a_half_finished_study_say_why_a_claim_cannot_be_judged(tmp_path):
    # ce finished seed 0 only, the others seed 1 only (Slurm cells finish in any order): no pair anywhere
    cells = [c for c in paper_like() if (c["preset"] == "ce") == (c["seed"] == 0) and c["seed"] < 2]
    results, text = _report(cells, tmp_path)
    claims = {c["id"]: c for c in results["claims"]}
    assert claims["entropy_order"]["verdict"] == NOT_TESTED
    assert claims["entropy_order"]["evidence"].startswith("needs ce and precision and diversity at a common seed")
    assert "ce [0]" in claims["entropy_order"]["evidence"] and "precision [1]" in claims["entropy_order"]["evidence"]
    assert claims["precision_best_pass_at_k"]["verdict"] == NOT_TESTED
    assert "at a common seed" in claims["tail_penalty_tail_mass"]["evidence"]
    assert "## Verdicts" in text and "1 seeds finished of 4 asked (ce: 0; precision: 1;" in text


def test_claims_without_held_out_diagnostics_say_they_need_them(tmp_path):
    cells = paper_like()
    for cell in cells:
        cell["eval_stage1"]["diagnostics"] = None  # an evaluation dataset without a completion column
    results, text = _report(cells, tmp_path)
    claims = {c["id"]: c for c in results["claims"]}
    for cid in ("entropy_order", "tail_penalty_tail_mass", "head_reward_topk_entropy"):
        assert claims[cid]["verdict"] == NOT_TESTED and claims[cid]["evidence"].startswith("needs held-out diagnostics")
    assert claims["precision_best_pass_at_k"]["verdict"] == SUPPORTED  # the claims that need none are judged
    assert "needs held-out diagnostics" in text


def test_pass_at_k_is_taken_at_half_the_evaluations_own_n():
    evaluation = {"num_samples": 128, "avg_at_n": 0.1, "pass_at_k": {str(k): k / 128 for k in (1, 2, 4, 8, 16, 32, 64)}}
    assert paper_k(evaluation) == (64, 128)  # eval_paper.yaml: n = 128, k logged up to 64
    assert paper_k({"num_samples": 8, "pass_at_k": {"1": 0, "2": 0, "8": 0}}) == (2, 8)  # 4 not logged: the one below
    cell = make_cell("ce", 0, entropy=1.0, nll=1.0)
    cell["eval_rl"] = evaluation
    assert cell_metrics(cell)["rl_pass_at_k"] == 64 / 128
    results = build_results(StudyConfig(presets="ce", num_seeds=1), [cell], 1.0, ENV)
    assert results["pass_at_k_compared"] == ["Pass@64 of 128"]


def test_a_zero_spread_difference_from_fewer_than_3_seeds_is_no_verdict():
    two = [c for c in paper_like(noise=0.0) if c["seed"] < 2]  # the seeds agree exactly: zero spread
    found = verdicts(two)
    assert found.pop("rl_high_entropy_length_shortens") == SUPPORTED  # its two seeds differ: an interval, a verdict
    assert set(found.values()) == {NOT_RESOLVED}
    assert set(verdicts([c for c in paper_like(noise=0.0) if c["seed"] < 3]).values()) == {SUPPORTED}
    assert t_interval([0.1, 0.1]).sign() == 0 and not t_interval([0.0, 0.0]).within(0.5)
    assert t_interval([0.1, 0.1, 0.1]).sign() == 1  # three agreeing seeds are a (point) verdict
    claim = next(c for c in judge_claims(metric_values(two)) if c["id"] == "tail_penalty_tail_mass")
    assert "no spread to project from" in claim["resolution"]["open_by"][0]["note"]


def test_the_report_states_the_seeds_behind_each_number(tmp_path):
    cells = [c for c in paper_like() if not (c["preset"] == "precision" and c["seed"] == 3)]
    results, text = _report(cells, tmp_path)
    assert results["seeds_finished"]["precision"] == [0, 1, 2] and results["seeds_finished"]["ce"] == [0, 1, 2, 3]
    assert "seeds finished of 4 asked (ce: 0, 1, 2, 3; precision: 0, 1, 2;" in text
    row = next(
        line for line in text.splitlines() if line.startswith("| stage-1 held-out entropy (nats/token) | precision")
    )
    assert row.split(" | ")[3] == "0, 1, 2" and row.split(" | ")[5].rstrip(" |") == "0, 1, 2"
    assert "3 seeds per preset (the fewest any preset finished)" in text


def _t_side(values, threshold=0.0):
    """+1 / -1 if the 95% t interval of `values` lies above / below `threshold`, else 0 (computed by scipy)."""
    low, high = stats.t.interval(0.95, len(values) - 1, loc=statistics.mean(values),
                                 scale=statistics.stdev(values) / math.sqrt(len(values)))  # fmt: skip
    return 1 if low > threshold else -1 if high < threshold else 0


def test_decidability_names_what_keeps_a_task_from_deciding_the_central_claim():
    cells = paper_like()
    checks = {c["id"]: c["status"] for c in decidability(metric_values(cells))}
    assert checks["prior_moves_precision"] == checks["prior_moves_diversity"] == HOLDS
    assert checks["room_below_ceiling"] == HOLDS  # ce's Pass@k after RL is about 0.5
    assert checks["rl_learns"] == FAILS  # Avg@n is the same before and after RL: RL learned nothing

    # ce's Pass@k just below 90% with an interval that reaches above it; a gain whose interval contains 0
    passes, gains = {0: 0.88, 1: 0.93, 2: 0.86, 3: 0.89}, {0: 0.02, 1: 0.05, 2: -0.01, 3: 0.04}
    for cell in cells:
        if cell["preset"] == "ce":
            cell["eval_rl"]["pass_at_k"]["4"] = passes[cell["seed"]]
            cell["eval_rl"]["avg_at_n"] = cell["eval_stage1"]["avg_at_n"] + gains[cell["seed"]]
    assert _t_side(list(passes.values()), 0.9) == 0 and statistics.mean(passes.values()) < 0.9
    assert _t_side(list(gains.values())) == 0 and statistics.mean(gains.values()) > 0
    checks = {c["id"]: c for c in decidability(metric_values(cells))}
    assert checks["room_below_ceiling"]["status"] == checks["rl_learns"]["status"] == HOLDS_IN_MEANS
    assert "ce Pass@k after RL (%): 89 [" in checks["room_below_ceiling"]["evidence"]  # a level in percent, unsigned

    # saturated: every seed of ce above the ceiling; a prior the shaping moves the wrong way
    for cell in cells:
        if cell["preset"] == "ce":
            cell["eval_rl"]["pass_at_k"]["4"] = 0.97 + 0.005 * cell["seed"]
    checks = {c["id"]: c["status"] for c in decidability(metric_values(cells))}
    assert checks["room_below_ceiling"] == FAILS
    reversed_prior = {c["id"]: c["status"] for c in decidability(metric_values(paper_like(sign=-1)))}
    assert reversed_prior["prior_moves_precision"] == reversed_prior["prior_moves_diversity"] == FAILS
    # presets missing from the study are named
    only_ce = [c for c in cells if c["preset"] == "ce"]
    check = next(c for c in decidability(metric_values(only_ce)) if c["id"] == "prior_moves_precision")
    assert check["status"] == NOT_TESTED and "precision" in check["evidence"]
