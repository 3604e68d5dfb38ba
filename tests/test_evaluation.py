"""Evaluation: the pass@k estimator, majority vote, sampling, scoring, diagnostics and the files written."""

import json
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from trl_shaped.evaluation import (
    EvalConfig,
    cons_at_n,
    evaluate,
    majority_vote,
    pass_at_k,
    plot_entropy_per_preset,
    plot_pass_at_k,
    sample_completions,
    score_completions,
    text_diagnostics,
    write_results,
)
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden_size=32, tokenizer=tokenizer, seed=0)
    return model.eval(), tokenizer


# ---------------------------------------------------------------------------------------------------------------
# pass@k, majority vote
# ---------------------------------------------------------------------------------------------------------------


def test_pass_at_k_matches_exact_combinatorics():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)
    assert pass_at_k(5, 0, 3) == 0.0  # nothing correct
    assert pass_at_k(5, 5, 1) == 1.0  # everything correct
    assert pass_at_k(6, 1, 6) == 1.0  # k = n: the one correct sample is always drawn
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)  # pass@1 is the plain accuracy c / n


def test_pass_at_k_large_n_is_stable():
    # the paper's setting: 128 samples, pass@64; binomials of this size overflow floats
    n, k = 128, 64
    for c in (1, 7, 50):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize(
    "n, c, k, name",
    [
        (4, 1, 5, "k"),
        (4, 5, 1, "c"),
        (4, -1, 1, "c"),
        (4, 1, 0, "k"),
        (4, 1, -2, "k"),
        (0, 0, 1, "n"),
        (4, 1.5, 1, "c"),
    ],
)
def test_pass_at_k_rejects_bad_arguments(n, c, k, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        pass_at_k(n, c, k)


def test_majority_vote_tie_goes_to_first_occurrence():
    assert majority_vote(["3", "5", "5", "3"]) == "3"
    assert majority_vote(["5", "3", "3", "5"]) == "5"
    assert majority_vote([None, "7", None, None, "8", "8"]) == "8"  # None does not vote
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_cons_at_n_with_ties():
    # tie between "3" (correct) and "5" (wrong): the first-occurring answer wins
    assert cons_at_n(["3", "5", "5", "3"], [True, False, False, True]) == 1.0
    assert cons_at_n(["5", "3", "3", "5"], [False, True, True, False]) == 0.0
    # a clear majority that is wrong beats a correct minority
    assert cons_at_n(["1", "2", "2", None], [True, False, False, False]) == 0.0
    assert cons_at_n([None, None], [False, False]) == 0.0
    with pytest.raises(ValueError, match="same length"):
        cons_at_n(["1"], [True, False])


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


def test_score_completions_against_hand_counts():
    completions = [
        ["1+2=3 #### 3", "#### 3.0", "#### 4", "no answer"],  # 2 correct; "3" and "3.0" vote together
        ["#### 9", "#### 9", "#### 8", "#### 8"],  # 2 correct, tie 9 vs 8 -> 9 (first) -> correct
        ["#### 1", "#### 2", "#### 2", "#### 6"],  # 1 correct, majority 2 wrong
    ]
    answers = ["3", "8", "6"]
    result = score_completions(completions, answers, pass_k=[1, 2, 4])
    counts = [2, 2, 1]
    assert [p["num_correct"] for p in result["per_problem"]] == counts
    assert result["avg_at_n"] == pytest.approx(sum(c / 4 for c in counts) / 3)
    # problem 2: tie "9" vs "8", "9" first -> wrong; problem 1 majority "3" -> right; problem 3 "2" -> wrong
    assert [p["cons_correct"] for p in result["per_problem"]] == [True, False, False]
    assert result["cons_at_n"] == pytest.approx(1 / 3)
    for k in (1, 2, 4):
        expected = sum(1 - math.comb(4 - c, k) / math.comb(4, k) for c in counts) / 3
        assert result["pass_at_k"][str(k)] == pytest.approx(expected)
    assert result["per_problem"][0]["extracted"] == ["3", "3.0", "4", None]
    with pytest.raises(ValueError, match="pass_k"):
        score_completions(completions, answers, pass_k=[5])


# ---------------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------------


def _manual_greedy(model, tokenizer, prompt, max_new_tokens):
    """Independent greedy decoding: one unpadded prompt, argmax token by token, stop at eos."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_greedy_batched_left_padded_matches_manual_decoding(tiny):
    model, tokenizer = tiny
    prompts = ["1+2=?\n", "17-3+5=?\n", "9=?\n"]  # different lengths: the batch is left padded
    expected = [_manual_greedy(model, tokenizer, p, 6) for p in prompts]
    batched = sample_completions(
        model, tokenizer, prompts, num_samples=2, temperature=0.0, max_new_tokens=6, batch_size=8, progress=False
    )
    assert batched == [[e, e] for e in expected]
    # top_p this small keeps only the most probable token: sampling is greedy (and top_k does not interfere)
    nucleus = sample_completions(
        model,
        tokenizer,
        prompts,
        num_samples=2,
        temperature=1.0,
        top_p=1e-6,
        max_new_tokens=6,
        batch_size=4,
        progress=False,
    )
    assert nucleus == [[e, e] for e in expected]


def test_sampling_shapes_seed_and_chunking(tiny):
    model, tokenizer = tiny
    prompts = ["1+1=?\n", "2+2=?\n"]
    kwargs = dict(num_samples=5, temperature=1.0, top_p=1.0, max_new_tokens=5, batch_size=3, progress=False)
    first, lengths = sample_completions(model, tokenizer, prompts, seed=3, return_lengths=True, **kwargs)
    assert [len(row) for row in first] == [5, 5]  # n = 5 > batch_size = 3: several generate calls per prompt
    assert all(1 <= length <= 5 for row in lengths for length in row)
    assert sample_completions(model, tokenizer, prompts, seed=3, **kwargs) == first
    assert len({c for row in first for c in row}) > 1  # a random model at temperature 1 does not repeat itself
    assert model.training is False and tokenizer.padding_side == "right"  # state restored


# ---------------------------------------------------------------------------------------------------------------
# Distribution diagnostics
# ---------------------------------------------------------------------------------------------------------------


def _independent_stats(model, tokenizer, prompt, completion, top_k):
    """Per-token diagnostics of the completion tokens of one unpadded sequence, from plain torch ops."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    rows = []
    for t in range(len(prompt_ids), len(ids)):
        logp = torch.log_softmax(logits[t - 1], dim=-1)
        p = logp.exp()
        y = ids[t]
        top = torch.topk(p, top_k).indices
        q = p[top] / p[top].sum()
        rows.append(
            {
                "nll": -float(logp[y]),
                "entropy": -float((p * logp).sum()),
                "topk_entropy": -float((q * q.log()).sum()),
                "topk_mass": float(p[top].sum()),
                "tail_mass": 1 - float(p[top].sum()),
                "target_prob": float(p[y]),
                "target_in_topk": float(y in top.tolist()),
                "top1_accuracy": float(int(p.argmax()) == y),
            }
        )
    return rows


def test_text_diagnostics_match_independent_computation(tiny):
    model, tokenizer = tiny
    prompts = ["3+4=?\n", "12-5+1=?\n", "8=?\n"]
    completions = ["3+4=7 #### 7", "12-5=7 7+1=8 #### 8", "#### 8"]
    top_k = 5
    rows = [
        r for p, c in zip(prompts, completions, strict=True) for r in _independent_stats(model, tokenizer, p, c, top_k)
    ]
    got = text_diagnostics(model, tokenizer, completions, prompts=prompts, top_k=top_k, batch_size=2)
    assert got["num_tokens"] == len(rows)
    for key in (
        "nll",
        "entropy",
        "topk_entropy",
        "topk_mass",
        "tail_mass",
        "target_prob",
        "target_in_topk",
        "top1_accuracy",
    ):
        assert got[key] == pytest.approx(sum(r[key] for r in rows) / len(rows), abs=1e-5), key
    assert got["perplexity"] == pytest.approx(math.exp(sum(r["nll"] for r in rows) / len(rows)), rel=1e-5)
    # without prompts every token after the first is scored
    plain = text_diagnostics(model, tokenizer, ["abc", "de"], top_k=top_k)
    assert plain["num_tokens"] == 2 + 1


# ---------------------------------------------------------------------------------------------------------------
# Config, evaluate, files
# ---------------------------------------------------------------------------------------------------------------


def test_eval_config_validation_and_default_pass_k():
    assert EvalConfig(num_samples=16).pass_k == [1, 2, 4, 8, 16]
    assert EvalConfig(num_samples=6).pass_k == [1, 2, 4, 6]
    with pytest.raises(ValueError, match=r"pass_k .*num_samples=4"):
        EvalConfig(num_samples=4, pass_k=[1, 8])
    with pytest.raises(ValueError, match="top_p must be in"):
        EvalConfig(top_p=0.0)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        EvalConfig(num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        EvalConfig(temperature=-1.0)


def test_evaluate_and_files(tiny, tmp_path):
    model, tokenizer = tiny
    problems = [
        {"prompt": "1+2=?\n", "answer": "3", "completion": "1+2=3 #### 3"},
        {"prompt": "5-1=?\n", "answer": "4", "completion": "5-1=4 #### 4"},
    ]
    config = EvalConfig(
        num_samples=4,
        max_new_tokens=4,
        pass_k=[1, 4],
        diagnostics_top_k=5,
        progress=False,
        run_name="ce",
        output_dir=str(tmp_path),
    )
    result = evaluate(model, tokenizer, problems, config)
    assert result["num_problems"] == 2 and result["num_samples"] == 4
    assert all(len(p["completions"]) == 4 for p in result["per_problem"])
    # the aggregates are the per-problem counts run through the estimators
    counts = [p["num_correct"] for p in result["per_problem"]]
    assert result["avg_at_n"] == pytest.approx(sum(counts) / 8)
    assert result["pass_at_k"]["4"] == pytest.approx(sum(c > 0 for c in counts) / 2)
    expected_diag = text_diagnostics(
        model, tokenizer, [p["completion"] for p in problems], prompts=[p["prompt"] for p in problems], top_k=5
    )
    assert result["diagnostics"] == pytest.approx(expected_diag)

    paths = write_results(result, tmp_path, name="ce")
    assert json.loads(paths["json"].read_text())["pass_at_k"] == result["pass_at_k"]
    markdown = paths["markdown"].read_text()
    assert "Avg@4" in markdown and "Cons@4" in markdown and "Pass@4" in markdown and "entropy" in markdown
    assert paths["pass_at_k_plot"].read_bytes()[:8] == PNG_MAGIC

    other = dict(result, diagnostics=dict(result["diagnostics"], entropy=1.0))
    runs = {"ce": result, "precision": other}
    assert plot_pass_at_k(runs, tmp_path / "pass.png").read_bytes()[:8] == PNG_MAGIC
    assert plot_entropy_per_preset(runs, tmp_path / "entropy.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="without diagnostics"):
        plot_entropy_per_preset({"x": {"diagnostics": None}}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no column 'question'"):
        evaluate(model, tokenizer, problems, EvalConfig(prompt_column="question", num_samples=1, progress=False))


# ---------------------------------------------------------------------------------------------------------------
# The answer judge, strict JSON, plots with bands and error bars (shared with the demo and the study)
# ---------------------------------------------------------------------------------------------------------------


def test_is_correct_is_the_rl_reward_judgement():
    from trl_shaped.evaluation import is_correct
    from trl_shaped.rewards import exact_answer_reward

    cases = [
        ("so 12 #### 12", "12", True),
        ("#### 12.0", "12", True),
        ("#### $1,200", "1200", True),
        ("\\boxed{7}", "7", True),
        ("#### 13", "12", False),
        ("no answer", "12", False),
        ([{"role": "assistant", "content": "#### 5"}], "5", True),
    ]
    for completion, answer, expected in cases:
        assert is_correct(completion, answer) is expected, (completion, answer)
        assert is_correct(completion, answer) == (exact_answer_reward([completion], [answer])[0] == 1.0)
    assert is_correct("#### 3", 3)  # a gold answer read from a numeric column


def test_strict_json_of_non_finite_values():
    from trl_shaped.evaluation import to_jsonable

    value = {"a": float("nan"), "b": [1.5, float("inf")], 3: torch.tensor(2.5), "c": np.float32(0.25)}
    assert to_jsonable(value) == {"a": None, "b": [1.5, None], "3": 2.5, "c": 0.25}
    json.dumps(to_jsonable(value), allow_nan=False)  # would raise on a NaN left behind


def _pixels(path):
    import matplotlib.image

    return matplotlib.image.imread(path)


def test_pass_at_k_bands_and_bars_with_error_bars_are_drawn(tmp_path):
    from trl_shaped.evaluation import plot_metric_bars

    mean = {"pass_at_k": {"1": 0.3, "2": 0.45, "4": 0.6}}
    band = mean | {"pass_at_k_lower": {"1": 0.2, "2": 0.35, "4": 0.5}, "pass_at_k_upper": {1: 0.4, 2: 0.55, 4: 0.7}}
    plain = plot_pass_at_k({"ce": mean}, tmp_path / "plain.png")
    banded = plot_pass_at_k({"ce": band}, tmp_path / "band.png")
    assert banded.read_bytes()[:8] == PNG_MAGIC
    # the band is on the picture: same size, other pixels (the mean line and the axes are the same)
    assert _pixels(plain).shape == _pixels(banded).shape and (_pixels(plain) != _pixels(banded)).any()
    with pytest.raises(ValueError, match="pass_at_k_lower/upper must have the k of pass_at_k"):
        plot_pass_at_k({"ce": band | {"pass_at_k_lower": {"1": 0.2}}}, tmp_path / "bad.png")

    runs = {"ce": {"entropy": 1.0, "topk_entropy": 0.5}, "precision": {"entropy": 0.8, "topk_entropy": 0.4}}
    with_bars = {
        label: run | {f"{m}_lower": v - 0.1 for m, v in run.items()} | {f"{m}_upper": v + 0.1 for m, v in run.items()}
        for label, run in runs.items()
    }
    no_err = plot_metric_bars(runs, tmp_path / "bars.png", ["entropy", "topk_entropy"])
    err = plot_metric_bars(with_bars, tmp_path / "err.png", ["entropy", "topk_entropy"])
    assert (_pixels(no_err) != _pixels(err)).any()
    assert plot_entropy_per_preset(with_bars, tmp_path / "entropy.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"runs without the metrics to plot: \{'precision': \['tail_mass'\]\}"):
        plot_metric_bars(runs | {"precision": {"entropy": 1.0}} | {"ce": {"tail_mass": 0.1}}, tmp_path / "x.png",
                         ["tail_mass"])  # fmt: skip


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    # A notebook user's backend must survive a plot: the figures are built without pyplot.
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "from trl_shaped.evaluation import plot_pass_at_k\n"
        f"path = plot_pass_at_k({{'ce': {{'pass_at_k': {{'1': 0.5, '2': 0.7}}}}}}, {str(tmp_path / 'p.png')!r})\n"
        "assert path.read_bytes()[:8] == b'\\x89PNG\\r\\n\\x1a\\n'\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["svg", "False"]
