"""Evaluation scored by the judges that RL rewards with: the math judge on LaTeX answers, the columns a judge gets,
partial credit, the majority vote by a judge's answer key, `trl-shaped eval --judge` end to end and its tracker."""

import json

import numpy as np
import pytest
import torch
import trl.rewards

from trl_shaped.cli import dispatch
from trl_shaped.evaluation import EvalConfig, evaluate, score_completions
from trl_shaped.evaluation.metrics import vote_keys
from trl_shaped.evaluation.tracking import check_report_to, tracked_metrics
from trl_shaped.rewards import MathAnswerReward, exact_answer_reward, get_judge, math_answer_reward
from trl_shaped.sandbox import SandboxLimits
from trl_shaped.scripts.grpo import ShapedGRPOScriptArguments, resolve_reward_funcs
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

pytest.importorskip("math_verify")  # the math extra (in `dev`): without it `math` is a string match

HALF = r"\boxed{\frac{1}{2}}"
# A judge in this module, reached by its dotted path as a user's own judge would be.
JUDGE_PATH = f"{__name__}.share_of_tests_held"
CALLS = []


def share_of_tests_held(completions, tests, **kwargs):
    """A partial-credit judge like code's: the fraction of the problem's `tests` (here substrings) the completion
    holds. Records each call."""
    CALLS.append({"completions": list(completions), "tests": list(tests), **kwargs})
    return [sum(t in c for t in ts) / len(ts) for c, ts in zip(completions, tests, strict=True)]


def _answer_writer(path):
    """A real checkpoint whose completion of any prompt is `HALF` and then eos, at any temperature: one token holds
    the whole answer; with the layers' outputs zeroed the last hidden state is the last token's one-hot embedding,
    and the LM head maps every token to the answer token, and the answer token to eos, by a wide margin."""
    tokenizer = build_char_tokenizer()
    tokenizer.add_tokens([HALF])
    answer_id, vocab = tokenizer.convert_tokens_to_ids(HALF), len(tokenizer)
    model = build_tiny_model(vocab, hidden_size=vocab + (-vocab) % 8, num_layers=1, tokenizer=tokenizer)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab].copy_(torch.eye(vocab))
        model.lm_head.weight.zero_()
        model.lm_head.weight[answer_id, :vocab] = 10.0
        model.lm_head.weight[answer_id, answer_id] = 0.0
        model.lm_head.weight[tokenizer.eos_token_id, answer_id] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def writer_dir(tmp_path_factory):
    return _answer_writer(tmp_path_factory.mktemp("writer"))


PROBLEMS = [
    {"prompt": "Half of one? ", "answer": r"\frac{1}{2}", "completion": "one half"},
    {"prompt": "A third of one? ", "answer": r"\frac{1}{3}", "completion": "one third"},
]


# ---------------------------------------------------------------------------------------------------------------
# The math judge: what the exact judge cannot score
# ---------------------------------------------------------------------------------------------------------------


def test_math_judge_scores_latex_answers_that_exact_cannot():
    cases = [  # (completion, gold, right?)
        (f"so {HALF}", r"\frac{1}{2}", True),
        ("#### 0.5", r"\frac{1}{2}", True),
        (r"\boxed{x^2+1}", "x^2+1", True),
        (r"\boxed{1+x^2}", "x^2+1", True),
        (r"\boxed{(0, 1]}", "(0,1]", True),
        (r"\boxed{\{2,1\}}", r"\{1,2\}", True),
        ("#### 0.6", r"\frac{1}{2}", False),
        (r"\boxed{x^2+2}", "x^2+1", False),
        (r"\boxed{[0,1)}", "(0,1]", False),
        (r"\boxed{\{1,3\}}", r"\{1,2\}", False),
        ("#### 12", "12", True),
    ]
    completions = [[c] for c, _, _ in cases]
    golds = [g for _, g, _ in cases]
    math_result = score_completions(completions, golds, judge="math")
    assert [p["scores"] for p in math_result["per_problem"]] == [[float(right)] for _, _, right in cases]
    assert math_result["judge"] == "math"
    # the exact judge (the default) reads numbers only: none of the LaTeX answers, "#### 0.5" against a fraction
    # neither; only the plain number is right
    exact = score_completions(completions, golds)
    assert exact["judge"] == "exact"
    assert [p["num_correct"] for p in exact["per_problem"]] == [0] * 10 + [1]
    assert exact["per_problem"] == score_completions(completions, golds, judge=exact_answer_reward)["per_problem"]


# ---------------------------------------------------------------------------------------------------------------
# What a judge gets and what its scores become
# ---------------------------------------------------------------------------------------------------------------


def test_partial_credit_counts_only_full_scores_and_columns_reach_the_judge_once():
    CALLS.clear()
    completions = [["abc", "ab", "a", "abc"], ["x", "y", "x", "z"]]
    tests = [["a", "b", "c"], ["x"]]
    result = score_completions(completions, judge=JUDGE_PATH, columns={"tests": tests}, pass_k=[1, 2, 4])
    assert len(CALLS) == 1  # every completion of every problem in one call, each with its own problem's tests
    assert CALLS[0]["completions"] == completions[0] + completions[1]
    assert CALLS[0]["tests"] == [tests[0]] * 4 + [tests[1]] * 4
    first, second = result["per_problem"]
    assert first["scores"] == pytest.approx([1, 2 / 3, 1 / 3, 1]) and second["scores"] == [1, 0, 1, 0]
    assert (first["num_correct"], second["num_correct"]) == (2, 2)
    assert result["avg_at_n"] == pytest.approx(0.5)
    assert result["mean_score"] == pytest.approx(((1 + 2 / 3 + 1 / 3 + 1) / 4 + 0.5) / 2)  # partial credit counts
    assert result["pass_at_k"]["1"] == pytest.approx(0.5) and result["pass_at_k"]["4"] == 1.0
    assert first["answer"] is None and result["judge"] == JUDGE_PATH


def test_majority_vote_groups_by_the_judges_answer_key():
    def letter_a(completions, **kwargs):
        return [float(c.strip().lower() == "a") for c in completions]

    samples = [["A", "a ", "b", "c"]]
    # without an answer key a sample votes with its extracted answer: none here, so nothing wins
    assert score_completions(samples, judge=letter_a)["cons_at_n"] == 0.0
    letter_a.answer_key = lambda completion: completion.strip().lower()
    result = score_completions(samples, judge=letter_a)
    assert result["per_problem"][0]["majority_answer"] == "a" and result["cons_at_n"] == 1.0


def test_math_majority_vote_counts_equal_answers_together():
    samples = [["#### 0.5", r"\boxed{\frac12}", "#### 3", "#### 3.0", r"\boxed{\frac{1}{2}}"]]
    result = score_completions(samples, [r"\frac{1}{2}"], judge="math")
    # three samples answer 1/2 in three forms, two answer 3: the vote goes to 1/2, which is right
    assert result["per_problem"][0]["scores"] == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert result["per_problem"][0]["majority_answer"] == "1/2" and result["cons_at_n"] == 1.0

    def same_scores_without_a_key(completions, answer, **kwargs):
        return math_answer_reward(completions, answer)

    # voting by the answers' text instead, "3" and "3.0" (one number) outvote each form of 1/2
    assert score_completions(samples, [r"\frac{1}{2}"], judge=same_scores_without_a_key)["cons_at_n"] == 0.0


def test_judge_output_and_config_are_checked():
    with pytest.raises(ValueError, match=r"must score in \[0, 1\]"):
        score_completions([["a"]], judge=lambda completions, **kw: [2.0])
    with pytest.raises(ValueError, match="returned 2 scores for 1"):
        score_completions([["a"]], judge=lambda completions, **kw: [1.0, 1.0])
    with pytest.raises(ValueError, match=r"judge must be one of \['code', 'exact', 'math', 'reasoning_gym'\]"):
        EvalConfig(judge="mathh")
    with pytest.raises(ValueError, match="judge 'no_such_module.judge' does not import"):
        EvalConfig(judge="no_such_module.judge")
    assert EvalConfig(judge="math").judge == "math"


def test_evaluate_gives_the_judge_the_rows_columns(writer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(writer_dir), AutoTokenizer.from_pretrained(writer_dir)
    rows = [
        {"question": "Half? ", "gold": "0.5", "tests": [r"\frac{1}{2}", "boxed", "zzz"], "solution": "half"},
        {"question": "Boxed? ", "gold": "1", "tests": ["boxed"], "solution": "yes"},
    ]
    config = EvalConfig(
        judge=JUDGE_PATH, prompt_column="question", answer_column="gold", completion_column="solution",
        num_samples=3, max_new_tokens=3, pass_k=[1], diagnostics=False, progress=False,
    )  # fmt: skip
    CALLS.clear()
    result = evaluate(model, tokenizer, rows, config)
    # one call on the first row before sampling (its reference completion), then one for every completion
    assert len(CALLS) == 2
    probe, call = CALLS
    assert probe["completions"] == ["half"] and probe["tests"] == [rows[0]["tests"]]
    assert call["completions"] == [HALF] * 6  # the checkpoint writes its one answer, then eos
    # as TRL calls a reward: the prompts, every column but `prompt` and `completion` (as GRPO passes the same rows),
    # one value per completion (the answer column also as `answer`), and TRL's trainer arguments
    trainer = {"completion_ids", "trainer_state", "log_extra", "log_metric"}
    assert set(call) == {"completions", "prompts", "tests", "answer", "question", "gold", "solution"} | trainer
    assert [len(ids) for ids in call["completion_ids"]] == [2] * 6  # the answer token and eos
    assert call["prompts"] == ["Half? "] * 3 + ["Boxed? "] * 3
    assert call["answer"] == ["0.5"] * 3 + ["1"] * 3
    assert call["tests"] == [rows[0]["tests"]] * 3 + [rows[1]["tests"]] * 3
    assert [p["scores"] for p in result["per_problem"]] == [[2 / 3] * 3, [1.0] * 3]
    assert result["avg_at_n"] == 0.5 and result["mean_score"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["judge"] == result["settings"]["judge"] == JUDGE_PATH
    # a column the judge needs is asked for before any sampling
    with pytest.raises(ValueError, match="no column 'tests', which judge"):
        evaluate(model, tokenizer, [{"question": "q", "gold": "1"}], config)
    with pytest.raises(ValueError, match="no column 'gold', which judge 'math'"):
        evaluate(model, tokenizer, [{"question": "q"}], EvalConfig(**{**vars(config), "judge": "math"}))


# ---------------------------------------------------------------------------------------------------------------
# `trl-shaped eval --judge math --report_to tensorboard` end to end
# ---------------------------------------------------------------------------------------------------------------


def _tensorboard(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    texts = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]}
    return scalars, texts


def test_cli_eval_with_the_math_judge_logs_to_tensorboard(writer_dir, tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in PROBLEMS))
    out = tmp_path / "eval"
    result = dispatch([
        "eval", "--model_name_or_path", str(writer_dir), "--dataset_name", str(data), "--judge", "math",
        "--num_samples", "2", "--pass_k", "1", "2", "--max_new_tokens", "3", "--diagnostics_top_k", "5",
        "--no_progress", "--output_dir", str(out), "--run_name", "math", "--report_to", "tensorboard",
        "--tracker_run_name", "study/ce/seed0/eval_rl",
    ])  # fmt: skip
    completions = [p["completions"] for p in result["per_problem"]]
    assert completions == [[HALF] * 2] * 2
    # the right \boxed{\frac{1}{2}} is right, the same answer to the other problem wrong; scored as RL rewards
    assert [p["scores"] for p in result["per_problem"]] == [[1.0, 1.0], [0.0, 0.0]]
    for samples, row, record in zip(completions, PROBLEMS, result["per_problem"], strict=True):
        assert record["scores"] == math_answer_reward(samples, [row["answer"]] * len(samples))
    assert result["avg_at_n"] == result["cons_at_n"] == result["pass_at_k"]["2"] == 0.5
    assert score_completions(completions, [r["answer"] for r in PROBLEMS])["avg_at_n"] == 0.0  # exact: wrong
    saved = json.loads((out / "math.json").read_text())
    assert saved["judge"] == saved["settings"]["judge"] == "math"
    assert saved["per_problem"][0]["scores"] == [1.0, 1.0]
    assert "judge `math`" in (out / "math.md").read_text()

    logged, texts = _tensorboard(out)
    expected = tracked_metrics(result)
    assert set(logged) == set(expected) and "eval/diagnostics/entropy" in logged and "eval/mean_score" in logged
    with np.errstate(over="ignore"):  # event files hold float32 (this model's perplexity overflows it)
        expected = {tag: float(np.float32(value)) for tag, value in expected.items()}
    assert logged == {tag: [(0, pytest.approx(value))] for tag, value in expected.items()}
    assert texts["eval/run_name/text_summary"] == "study/ce/seed0/eval_rl"


def test_report_to_names_known_installed_trackers():
    assert check_report_to(["none"]) == [] and check_report_to("tensorboard") == ["tensorboard"]
    assert "tensorboard" in check_report_to(["all"])
    with pytest.raises(ValueError, match="report_to must name trackers out of"):
        EvalConfig(report_to=["tensorbored"])


# ---------------------------------------------------------------------------------------------------------------
# RL takes the same names
# ---------------------------------------------------------------------------------------------------------------


def test_grpo_reward_funcs_take_the_judge_names():
    funcs = resolve_reward_funcs(["exact", "math", "exact_answer_reward", JUDGE_PATH])
    assert funcs == [get_judge("exact"), get_judge("math"), exact_answer_reward, share_of_tests_held]
    assert funcs[1] is math_answer_reward
    with pytest.raises(ValueError, match=r"reward_funcs: judge must be one of \['code', 'exact', 'math'"):
        resolve_reward_funcs(["mathh"])


NAMES = {
    "exact": exact_answer_reward,
    "exact_answer_reward": exact_answer_reward,
    "math": math_answer_reward,
    "math_answer_reward": math_answer_reward,
    "code_reward": get_judge("code"),
    "reasoning_gym_reward": get_judge("reasoning_gym"),
    "accuracy_reward": trl.rewards.accuracy_reward,
    "trl.rewards.accuracy_reward": trl.rewards.accuracy_reward,
    "think_format_reward": trl.rewards.think_format_reward,
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_one_set_of_names_for_reward_funcs_and_judge(name):
    # `trl-shaped grpo --reward_funcs NAME` and `trl-shaped eval --judge NAME` take the same names, to one function
    assert resolve_reward_funcs([name]) == [NAMES[name]]
    assert EvalConfig(judge=name).judge == name and get_judge(name) is NAMES[name]
    assert ShapedGRPOScriptArguments(reward_funcs=[name]).reward_funcs == [name]


def test_judge_args_are_the_same_in_both_stages_and_checked_when_the_config_is_built():
    loose = get_judge("math", {"anchored": False})
    assert isinstance(loose, MathAnswerReward) and not loose.anchored
    grpo = resolve_reward_funcs(["math_answer_reward"], {"anchored": False})[0]
    assert grpo.anchored is False and grpo(["It is 5."], ["5"]) == loose(["It is 5."], ["5"]) == [1.0]
    assert EvalConfig(judge="math", judge_args='{"anchored": false}').judge_args == {"anchored": False}  # the CLI's
    code = get_judge("code", {"limits": {"wall_time_s": 2, "cpu_time_s": 1}, "all_or_nothing": True})
    assert code.all_or_nothing and code.limits == SandboxLimits(wall_time_s=2, cpu_time_s=1)
    # several reward functions: reward function name -> its options
    funcs = resolve_reward_funcs(["math", "code"], {"math": {"anchored": False}, "code": {"all_or_nothing": True}})
    assert funcs[0].anchored is False and funcs[1].all_or_nothing is True
    for config in (
        lambda args: EvalConfig(judge="math", judge_args=args),
        lambda args: ShapedGRPOScriptArguments(reward_funcs=["math"], judge_args=args),
    ):
        with pytest.raises(
            ValueError, match=r"judge 'math' takes no option \['anchord'\]; its options: \['anchored'\]"
        ):
            config({"anchord": False})
        with pytest.raises(ValueError, match="judge_args must be a mapping"):
            config("[1, 2]")
    with pytest.raises(ValueError, match="anchored must be True or False"):
        EvalConfig(judge="math", judge_args={"anchored": "no"})
    with pytest.raises(ValueError, match=r"limits of judge 'code': .*wall_tim"):
        EvalConfig(judge="code", judge_args={"limits": {"wall_tim": 2}})
    with pytest.raises(ValueError, match="judge 'exact' takes no option"):
        EvalConfig(judge="exact", judge_args={"anchored": False})
    with pytest.raises(ValueError, match=r"maps each reward function's name \(out of \['math', 'code'\]\)"):
        ShapedGRPOScriptArguments(reward_funcs=["math", "code"], judge_args={"anchored": False})


# ---------------------------------------------------------------------------------------------------------------
# Hard to game: anchored answers only, and every scored answer votes
# ---------------------------------------------------------------------------------------------------------------

HEDGES = ["I am not sure. It could be 3, 4 or 5.", "Problem 5: I cannot solve this."]


@pytest.mark.parametrize("judge", ["math", "exact"])
def test_unanchored_text_scores_zero(judge):
    score = get_judge(judge)
    assert score(HEDGES, ["5", "5"]) == [0.0, 0.0]
    assert score([r"so \boxed{5}", "so #### 5", r"\boxed{4}"], ["5"] * 3) == [1.0, 1.0, 0.0]
    # the loose form is a setting; it reads the end of the text (what made the hedges score)
    assert get_judge("math", {"anchored": False})(HEDGES, ["5", "5"]) == [1.0, 1.0]


@pytest.mark.parametrize(("judge", "judge_args"), [("math", {}), ("math", {"anchored": False}), ("exact", {})])
def test_cons_at_n_counts_every_scored_answer(judge, judge_args):
    samples = ["the answer: 5", "It is 5", r"\boxed{5}", r"\boxed{4}", "so #### 4"]
    scorer = get_judge(judge, judge_args)
    result = score_completions([samples], ["5"], pass_k=[1], judge=scorer)
    record = result["per_problem"][0]
    keys = vote_keys(scorer, samples)
    # whatever the judge scored has a vote; the majority of the votes decides Cons@n
    assert all(key is not None for key, score in zip(keys, record["scores"], strict=True) if score > 0)
    votes = [k for k in keys if k is not None]
    winner = max(votes, key=votes.count)
    assert record["majority_answer"] == winner
    assert result["cons_at_n"] == float(record["scores"][keys.index(winner)] == 1.0)
    if judge_args:  # loose: 3 samples answer 5 (scored 1.0) and 2 answer 4: Avg 0.6, Cons 1
        assert (result["avg_at_n"], result["cons_at_n"]) == (0.6, 1.0)
    else:  # anchored: 1 right box against 2 anchored 4s: Avg 0.2, Cons 0
        assert (result["avg_at_n"], result["cons_at_n"]) == (0.2, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# The evaluation hands a judge what GRPO hands it, and checks it before sampling
# ---------------------------------------------------------------------------------------------------------------

CHAT_PROBLEMS = [
    {"prompt": [{"role": "user", "content": "Half of one?"}], "solution": r"\frac{1}{2}"},
    {"prompt": [{"role": "user", "content": "A third of one?"}], "solution": r"\frac{1}{3}"},
]


def test_trl_accuracy_reward_judges_conversational_data(writer_dir, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in CHAT_PROBLEMS))
    result = dispatch([
        "eval", "--model_name_or_path", str(writer_dir), "--dataset_name", str(data), "--judge", "accuracy_reward",
        "--num_samples", "2", "--pass_k", "1", "--max_new_tokens", "3", "--diagnostics", "false", "--no_progress",
        "--output_dir", str(tmp_path / "eval"),
    ])  # fmt: skip
    # TRL's reward reads completion[0]["content"]: conversational completions, as GRPO hands them
    assert [p["scores"] for p in result["per_problem"]] == [[1.0, 1.0], [0.0, 0.0]]
    assert result["avg_at_n"] == 0.5 and result["judge"] == "trl.rewards.accuracy_rewards.accuracy_reward"
    assert result["per_problem"][0]["completions"] == [HALF, HALF]


def raises_on_tests(completions, tests, **kwargs):
    raise KeyError("tests must be dicts")


def test_a_judge_that_fails_on_the_first_row_fails_before_sampling(writer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(writer_dir), AutoTokenizer.from_pretrained(writer_dir)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the judge was checked")

    model.generate = no_sampling
    config = EvalConfig(judge=f"{__name__}.raises_on_tests", num_samples=2, diagnostics=False, progress=False)
    with pytest.raises(ValueError, match=r"raises_on_tests fails on the first problem, checked before sampling"):
        evaluate(model, tokenizer, [{"prompt": "q", "tests": ["x"]}], config)
    # TRL's accuracy_reward on plain-text prompts gets strings, as GRPO would hand it: it cannot read them, before
    # anything is sampled
    with pytest.raises(ValueError, match="accuracy_reward fails on the first problem.*plain-text"):
        evaluate(model, tokenizer, [{"prompt": "q", "solution": "1"}], EvalConfig(judge="accuracy_reward"))


# ---------------------------------------------------------------------------------------------------------------
# A study's evaluation stages report like its training stages: <study>/<preset>/seed<k>/<stage>
# ---------------------------------------------------------------------------------------------------------------


def test_builtin_study_evaluation_logs_under_the_stage_run_name(tmp_path):
    from trl_shaped.study import StudyConfig
    from trl_shaped.study.builtin_cell import evaluate_checkpoint, shared_tokenizer, task_data, tracking

    config = StudyConfig(
        presets="ce", num_seeds=1, output_dir=str(tmp_path / "arith"), num_train_problems=8, num_rl_problems=4,
        num_test_problems=3, eval_num_samples=2, report_to=["tensorboard"],
    )  # fmt: skip
    data = task_data(config)
    tokenizer = shared_tokenizer(config, data, tmp_path / "tokenizer")
    build_tiny_model(len(tokenizer), hidden_size=16, num_layers=1, tokenizer=tokenizer).save_pretrained(tmp_path / "rl")
    cell = tmp_path / "cell"
    cell.mkdir()
    record = evaluate_checkpoint(
        tmp_path / "rl", tokenizer, data, config, 0, cell / "eval_rl_samples.json", tracking(config, "ce", 0, "eval_rl")
    )
    assert record["judge"] == config.study_task().judge  # the judge RL rewards with
    scalars, texts = _tensorboard(cell / "eval_rl")
    assert scalars["eval/avg_at_n"] == [(0, pytest.approx(record["avg_at_n"]))]
    assert scalars["eval/pass_at_2"] == [(0, pytest.approx(record["pass_at_k"]["2"]))]
    assert texts["eval/run_name/text_summary"] == "arith/ce/seed0/eval_rl"
