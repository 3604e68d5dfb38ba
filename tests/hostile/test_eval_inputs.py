"""Evaluation probed as a careless or hostile user would: bad arguments, bad data, nothing to score.

Each bad input raises a ValueError before any compute, and the message names the argument (and its range); a set
with no scored diagnostic token reports NaN (null in the JSON) with one warning, never nll 0 / perplexity 1.
"""

import json
import math
import sys
import warnings

import numpy as np
import pytest

from trl_shaped.evaluation import (
    EvalConfig,
    evaluate,
    markdown_summary,
    pass_at_k,
    sample_completions,
    score_completions,
    text_diagnostics,
    write_results,
)
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_char_tokenizer()
    return build_tiny_model(len(tokenizer), hidden_size=32, tokenizer=tokenizer, seed=0).eval(), tokenizer


# ---------------------------------------------------------------------------------------------------------------
# pass_at_k: integral floats are integers; anything else non-integral is refused by name
# ---------------------------------------------------------------------------------------------------------------


def test_pass_at_k_accepts_integral_floats_and_numpy_integers():
    assert pass_at_k(5.0, 2, 1) == pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(np.int64(5), np.int32(2), 2.0) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))


@pytest.mark.parametrize(
    "n, c, k, name",
    [(5.5, 2, 1, "n"), ("5", 2, 1, "n"), (True, 1, 1, "n"), (math.inf, 1, 1, "n"), (5, math.nan, 1, "c"),
     (5, 2, None, "k"), (5, 2, 1.25, "k")],
)  # fmt: skip
def test_pass_at_k_rejects_non_integers_by_name(n, c, k, name):
    with pytest.raises(ValueError, match=rf"^{name} must be .*an integer"):
        pass_at_k(n, c, k)


# ---------------------------------------------------------------------------------------------------------------
# EvalConfig: every field checked at construction
# ---------------------------------------------------------------------------------------------------------------


def test_pass_k_non_integral_is_refused_not_truncated():
    with pytest.raises(ValueError, match=r"^pass_k values must be integers in \[1, num_samples=4\], got \[1.5\]"):
        EvalConfig(num_samples=4, pass_k=[1.5])
    assert EvalConfig(num_samples=4, pass_k=[2.0, 1]).pass_k == [1, 2]  # integral floats (YAML 2.0) are fine
    with pytest.raises(ValueError, match=r"^pass_k must hold at least one k"):
        EvalConfig(num_samples=4, pass_k=[])
    with pytest.raises(ValueError, match=r"^pass_k must be a list of integers"):
        EvalConfig(num_samples=4, pass_k="1")
    with pytest.raises(ValueError, match=r"^pass_k values must be integers"):
        EvalConfig(num_samples=4, pass_k=["2"])


def test_dtype_is_checked_at_construction_with_the_choices():
    with pytest.raises(
        ValueError, match=r"^dtype must be one of \['auto', 'bfloat16', 'float16', 'float32'\], got 'float8'"
    ):
        EvalConfig(dtype="float8")


def test_num_samples_string_is_refused_in_python():
    # The command line converts "--num_samples 4" itself; in Python a string is a mistake and says so.
    with pytest.raises(ValueError, match=r"^num_samples must be >= 1 \(an integer\), got '4' \(str\)"):
        EvalConfig(num_samples="4")
    assert EvalConfig(num_samples=4.0).num_samples == 4
    with pytest.raises(ValueError, match=r"^num_samples must be >= 1"):
        EvalConfig(num_samples=True)


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("temperature", "hot", ">= 0"), ("temperature", math.nan, ">= 0"), ("temperature", -0.1, ">= 0"),
        ("top_p", 1.5, r"in \(0, 1\]"), ("top_p", 0, r"in \(0, 1\]"), ("seed", -1, ">= 0"), ("seed", 1.5, ">= 0"),
        ("max_new_tokens", 0, ">= 1"), ("batch_size", 2.5, ">= 1"), ("diagnostics_top_k", 0, ">= 1"),
        ("diagnostics_batch_size", None, ">= 1"), ("diagnostics_max_length", 1, ">= 2"), ("max_problems", 0, ">= 1"),
        ("vllm_gpu_memory_utilization", 0.0, r"in \(0, 1\]"), ("vllm_max_model_len", 1, ">= 2"),
    ],
)  # fmt: skip
def test_every_numeric_field_names_itself_and_its_range(field, value, allowed):
    with pytest.raises(ValueError, match=rf"^{field} must be {allowed}"):
        EvalConfig(**{field: value})


def test_use_vllm_without_vllm_names_the_field(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match=r"^use_vllm=True needs vLLM"):
        EvalConfig(use_vllm=True)


# ---------------------------------------------------------------------------------------------------------------
# score_completions, sample_completions, text_diagnostics
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completions, answers, message",
    [
        ([[]], ["1"], r"^completions must hold at least one completion per problem"),
        ([], [], r"^completions must hold at least one problem"),
        ([["#### 1"], ["#### 2", "#### 3"]], ["1", "2"], r"^completions must hold the same number .* \[1\] differ"),
        ([["#### 1"]], ["1", "2"], r"^completions and answers must have the same length"),
    ],
)
def test_score_completions_bad_shapes(completions, answers, message):
    with pytest.raises(ValueError, match=message):
        score_completions(completions, answers)


def test_score_completions_bad_pass_k():
    with pytest.raises(ValueError, match=r"^pass_k values must be in \[1, 2\]"):
        score_completions([["#### 1", "#### 2"]], ["1"], pass_k=[1.5])
    assert score_completions([["#### 1", "#### 2"]], ["1"], pass_k=[2.0])["pass_at_k"] == {"2": 1.0}


@pytest.mark.parametrize(
    "kwargs, name",
    [({"num_samples": 0}, "num_samples"), ({"top_p": 0.0}, "top_p"), ({"temperature": -1.0}, "temperature"),
     ({"seed": -3}, "seed"), ({"batch_size": 0}, "batch_size"), ({"max_new_tokens": 0}, "max_new_tokens")],
)  # fmt: skip
def test_sample_completions_bad_arguments(tiny, kwargs, name):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        sample_completions(model, tokenizer, ["1+1=?\n"], **({"num_samples": 2, "progress": False} | kwargs))


def test_text_diagnostics_prompts_of_another_length(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=r"^prompts and texts must have the same length"):
        text_diagnostics(model, tokenizer, ["a", "b"], prompts=["x"])


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": None, "answer": "1"}, r"^column 'prompt' must hold a string or a list of chat messages .*\[1\]"),
        ({"prompt": "1=?", "answer": "1", "completion": 7}, r"^column 'completion' must hold a string .*\[1\] .*int"),
    ],
)
def test_evaluate_bad_column_values_are_named_before_sampling(tiny, row, message):
    model, tokenizer = tiny
    problems = [{"prompt": "2=?", "answer": "2", "completion": "#### 2"}, row]
    with pytest.raises(ValueError, match=message):
        evaluate(model, tokenizer, problems, EvalConfig(num_samples=1, progress=False))


# ---------------------------------------------------------------------------------------------------------------
# No scored token: NaN and one warning, never a perfect model
# ---------------------------------------------------------------------------------------------------------------


def _nan_diagnostics(diag: dict) -> bool:
    return diag["num_tokens"] == 0 and all(math.isnan(v) for k, v in diag.items() if k != "num_tokens")


def test_text_diagnostics_without_a_scored_token_is_nan(tiny):
    model, tokenizer = tiny
    with pytest.warns(UserWarning, match="no token to score") as caught:
        diag = text_diagnostics(model, tokenizer, ["", "x"])  # no text has a second token to predict
    assert len(caught) == 1 and _nan_diagnostics(diag)
    assert {"nll", "perplexity", "entropy"} <= set(diag)


def test_evaluate_without_a_scored_token_reports_nan_and_warns_once(tiny, tmp_path):
    model, tokenizer = tiny
    problems = [{"prompt": "12+30=?\n", "answer": "42", "completion": ""} for _ in range(3)]
    # max_length 2 keeps only prompt tokens: nothing of any completion is left to score
    config = EvalConfig(num_samples=2, max_new_tokens=2, diagnostics_max_length=2, diagnostics_batch_size=2,
                        progress=False, run_name="empty")  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(model, tokenizer, problems, config)
    assert sum("no token to score" in str(w.message) for w in caught) == 1
    assert _nan_diagnostics(result["diagnostics"])
    assert result["diagnostics"]["nll"] != 0 and result["diagnostics"]["perplexity"] != 1
    saved = json.loads(write_results(result, tmp_path, name="empty")["json"].read_text())  # strict JSON
    assert saved["diagnostics"]["nll"] is None and saved["diagnostics"]["perplexity"] is None
    assert saved["diagnostics"]["num_tokens"] == 0
    assert "| nll | n/a |" in markdown_summary(result)


# ---------------------------------------------------------------------------------------------------------------
# Templates, judges and judge_args from the command line: usage errors naming the key, before any loading
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt_template", "maths"], "invalid choice: 'maths' (choose from 'code', 'logic', 'math', 'plain')"),
        (["--chat_template", "maybe"], "chat_template must be one of ['auto', 'true', 'false']"),
        (["--stop_sequences", ""], "stop_sequences must be a list of non-empty strings"),
        (["--judge", "mathh"], "judge must be one of ['code', 'exact', 'math', 'reasoning_gym']"),
        (["--judge", "math", "--judge_args", "{anchored: [}"], "judge_args must be a mapping (JSON or YAML)"),
        (["--judge", "math", "--judge_args", '{"anchored": "no"}'], "anchored must be True or False"),
        (["--judge", "code", "--judge_args", '{"limits": {"wall_time": 1}}'], "judge_args: limits of judge 'code'"),
        (["--judge", "exact_answer_reward", "--judge_args", '{"x": 1}'], "judge 'exact_answer_reward' takes no option"),
        (["--suite", "nowhere.yaml"], "suite: can't read 'nowhere.yaml'"),
    ],
)
def test_bad_template_judge_and_suite_flags_are_usage_errors(args, message, capsys):
    from trl_shaped.cli import dispatch

    with pytest.raises(SystemExit) as exit_info:
        dispatch(["eval", "--model_name_or_path", "m", "--dataset_name", "d.jsonl", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def wrong_length_judge(completions, **kwargs):
    return [1.0, 1.0]


def out_of_range_judge(completions, **kwargs):
    return [2.0] * len(completions)


@pytest.mark.parametrize(
    "judge, message",
    [
        ("wrong_length_judge", "returned 2 scores for 1"),
        ("out_of_range_judge", r"must score in \[0, 1\], returned 2.0"),
    ],
)
def test_a_judge_that_misbehaves_on_the_first_row_stops_before_sampling(tiny, monkeypatch, judge, message):
    model, tokenizer = tiny
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("sampled before the judge was checked"))
    config = EvalConfig(judge=f"{__name__}.{judge}", num_samples=2, progress=False, diagnostics=False)
    with pytest.raises(ValueError, match=rf"fails on the first problem, checked before sampling.*{message}"):
        evaluate(model, tokenizer, [{"prompt": "1=?", "answer": "1"}], config)
