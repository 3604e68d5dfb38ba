"""Verdicts, figures and the report from a FIXTURE of cell results (no training): supported, contradicted, not
resolved and not tested cases, each decided from the intervals across seeds."""

import json
import random

import pytest

from trl_shaped.study.claims import (
    CONTRADICTED,
    NOT_RESOLVED,
    NOT_TESTED,
    SUPPORTED,
    cell_metrics,
    judge_claims,
    metric_values,
    start_end,
)
from trl_shaped.study.config import StudyConfig
from trl_shaped.study.figures import write_figures
from trl_shaped.study.report import render_markdown
from trl_shaped.study.runner import build_results

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
