"""Evaluation: sample n completions per problem, score them, and measure the model's distribution on held-out text.

The metrics are the paper's (docs/method.md, evaluation protocol): Avg@n (mean accuracy over n samples), Cons@n
(majority vote) and Pass@k with the unbiased estimator, plus the distribution diagnostics on held-out text.
One module per concern, read bottom-up:

    metrics.py        pure functions: `judge_scores` (one call to the judge, `EvalConfig.judge`: the RL reward's
                      name), `score_completions` (correct = score 1.0), `pass_at_k`, `majority_vote`, `cons_at_n`,
                      `is_correct` (the exact judge on one completion)
    sampling.py       `sample_completions` with `model.generate`, seeded per problem and sample (`sample_seed`)
    vllm_sampling.py  `sample_completions_vllm` with vLLM's offline engine (`EvalConfig.use_vllm`, optional extra)
    heldout.py        `text_diagnostics` (per-text sums added in order: shards add up exactly)
    config.py         `EvalConfig`, checked when built
    sharding.py       whole blocks of problems per process under `accelerate launch`, gathered in problem order
    evaluator.py      `evaluate`: all of the above on a list of problems, prompts built by the template
                      (`trl_shaped.prompts`), the judge handed what GRPO hands it and checked on one row first
    suite.py          `suite_configs`, `evaluate_suite`, `write_suite`: several benchmarks, one table (macro average)
    reporting.py      `write_results` (JSON, markdown, PNG) and plots with bands / error bars for several runs
    tracking.py       `log_evaluation`: the metrics to trackio / wandb / tensorboard (`EvalConfig.report_to`)

Loading a model and a dataset and the `trl-shaped eval` entry point live in `trl_shaped/scripts/eval.py`.
All accuracies are fractions in [0, 1]; the markdown summary prints them as percentages.
"""

from .config import EvalConfig
from .evaluator import evaluate
from .heldout import text_diagnostics
from .metrics import answer_key, cons_at_n, is_correct, judge_scores, majority_vote, pass_at_k, score_completions
from .reporting import (
    markdown_summary,
    plot_curves,
    plot_entropy_per_preset,
    plot_metric_bars,
    plot_pass_at_k,
    to_jsonable,
    write_results,
)
from .sampling import problem_seed, sample_completions, sample_seed
from .tracking import log_evaluation
from .vllm_sampling import sample_completions_vllm

__all__ = [
    "EvalConfig",
    "answer_key",
    "cons_at_n",
    "evaluate",
    "is_correct",
    "judge_scores",
    "log_evaluation",
    "majority_vote",
    "markdown_summary",
    "pass_at_k",
    "plot_curves",
    "plot_entropy_per_preset",
    "plot_metric_bars",
    "plot_pass_at_k",
    "problem_seed",
    "sample_completions",
    "sample_completions_vllm",
    "sample_seed",
    "score_completions",
    "text_diagnostics",
    "to_jsonable",
    "write_results",
]
