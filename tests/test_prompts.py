"""Prompt templates: one per domain, the same prompts and stop sequences in `trl-shaped grpo` and `trl-shaped eval`,
and GRPO reading the problem and answer columns by name."""

import json
import string
from pathlib import Path

import pytest
import yaml

from trl_shaped.cli import dispatch
from trl_shaped.evaluation import EvalConfig
from trl_shaped.prompts import (
    MATH_INSTRUCTION,
    PROMPT_TEMPLATES,
    PromptTemplate,
    build_prompt,
    format_rows,
    resolve_template,
    truncate_at_stop,
)
from trl_shaped.scripts.grpo import ShapedGRPOScriptArguments
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

RECORDER = f"{__name__}.recording_judge"
CALLS = []
STOPS = list(string.ascii_lowercase)  # a random character model writes one of these within a few tokens


def recording_judge(completions, prompts, answer, **kwargs):
    """Scores 0; records what it was handed, as GRPO and the evaluation hand it."""
    CALLS.append({"completions": list(completions), "prompts": list(prompts), "answer": list(answer), **kwargs})
    return [0.0] * len(completions)


def test_presets_and_their_answer_formats():
    assert set(PROMPT_TEMPLATES) == {"plain", "math", "code", "logic"}
    assert PROMPT_TEMPLATES["math"].instruction == MATH_INSTRUCTION and "\\boxed{}" in MATH_INSTRUCTION
    assert "```python" in PROMPT_TEMPLATES["code"].instruction
    reasoning_gym = pytest.importorskip("reasoning_gym.utils")
    # logic uses reasoning-gym's own <answer> system prompt (the installed package's text)
    assert PROMPT_TEMPLATES["logic"].system_prompt == reasoning_gym.SYSTEM_PROMPTS["default"]
    plain = PROMPT_TEMPLATES["plain"]
    assert build_prompt("2+3=", plain, build_char_tokenizer()) == "2+3="  # the row as it is


def test_chat_template_on_off_and_auto():
    chat = build_char_tokenizer()  # has a chat template
    bare = build_char_tokenizer()
    bare.chat_template = None
    math = PROMPT_TEMPLATES["math"]
    on = [{"role": "user", "content": f"What is 2+3?\n{MATH_INSTRUCTION}"}]
    assert build_prompt("What is 2+3?", math, chat) == on
    assert build_prompt("What is 2+3?", math, bare) == f"What is 2+3?\n{MATH_INSTRUCTION}"
    assert build_prompt("What is 2+3?", resolve_template("math", chat_template=False), chat) == on[0]["content"]
    assert build_prompt("What is 2+3?", resolve_template("math", chat_template="true"), bare) == on
    logic = resolve_template("logic", system_prompt="Answer in <answer> tags.")
    assert build_prompt("Q?", logic, chat) == [
        {"role": "system", "content": "Answer in <answer> tags."},
        {"role": "user", "content": "Q?"},
    ]
    assert build_prompt("Q?", resolve_template("logic", system_prompt="S.", chat_template=False)) == "S.\n\nQ?"
    # a conversation stays one; the instruction joins its last user message
    conversation = [{"role": "user", "content": "What is 2+3?"}]
    assert build_prompt(conversation, math, bare) == on


def test_bad_template_settings_fail_naming_the_key():
    with pytest.raises(ValueError, match=r"prompt_template must be one of \['code', 'logic', 'math', 'plain'\]"):
        resolve_template("maths")
    with pytest.raises(ValueError, match="chat_template must be one of"):
        PromptTemplate(chat_template="sometimes")
    with pytest.raises(ValueError, match="stop_sequences must be a list of non-empty strings"):
        resolve_template("math", stop_sequences=["", "x"])
    for config in (EvalConfig, ShapedGRPOScriptArguments):
        with pytest.raises(ValueError, match="prompt_template must be one of"):
            config(prompt_template="maths")
        with pytest.raises(ValueError, match="chat_template must be one of"):
            config(chat_template="maybe")


def test_format_rows_reads_the_columns_by_name():
    rows = [{"problem": "What is 2+3?", "answer": 5, "level": 1}]
    out = format_rows(rows, PROMPT_TEMPLATES["math"], None, prompt_column="problem")
    assert out == [
        {"problem": "What is 2+3?", "answer": "5", "level": 1, "prompt": f"What is 2+3?\n{MATH_INSTRUCTION}"}
    ]
    gsm = format_rows([{"question": "q", "gold": "7"}], PROMPT_TEMPLATES["plain"], None, prompt_column="question",
                      answer_column="gold")  # fmt: skip
    assert gsm[0]["prompt"] == "q" and gsm[0]["answer"] == "7"
    with pytest.raises(
        ValueError, match=r"prompt_column 'prompt' is not a column of the data; columns: \['answer', 'level'"
    ):
        format_rows(rows, PROMPT_TEMPLATES["math"])


def test_truncate_at_stop_keeps_the_first_stop_string():
    assert truncate_at_stop("12 Question: x Question:", ["Question:"]) == "12 Question:"
    assert truncate_at_stop("a</answer>b\n\nc", ["\n\n", "</answer>"]) == "a</answer>"
    assert truncate_at_stop("nothing", ["zz"]) == "nothing"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy")
    tokenizer = build_char_tokenizer()
    build_tiny_model(len(tokenizer), hidden_size=32, num_layers=1, tokenizer=tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_grpo_and_eval_hand_the_judge_the_same_prompts_and_stop(checkpoint, tmp_path):
    """`trl-shaped grpo` reads a `problem` column (it could not before), and both stages build the same conversational
    prompt from it, end completions at the same stop sequences, and hand the judge the same argument types."""
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {a}+3?", "answer": a + 3}) + "\n" for a in range(4)))
    shared = ["--prompt_column", "problem", "--prompt_template", "math", "--stop_sequences", *STOPS]
    CALLS.clear()
    dispatch([
        "grpo", "--model_name_or_path", str(checkpoint), "--dataset_data_files", f"train={data}",
        "--reward_funcs", RECORDER, *shared, "--max_steps", "1", "--num_generations", "4",
        "--per_device_train_batch_size", "4", "--max_completion_length", "12", "--dynamic_sampling", "false",
        "--beta", "0", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no",
        "--output_dir", str(tmp_path / "rl"),
    ])  # fmt: skip
    grpo_calls = list(CALLS)
    CALLS.clear()
    dispatch([
        "eval", "--model_name_or_path", str(checkpoint), "--dataset_name", str(data), "--judge", RECORDER, *shared,
        "--num_samples", "4", "--max_new_tokens", "12", "--diagnostics", "false", "--no_progress",
        "--output_dir", str(tmp_path / "eval"),
    ])  # fmt: skip
    eval_calls = CALLS[1:]  # the first call checks the judge on one row before sampling
    expected = {json.dumps([{"role": "user", "content": f"What is {a}+3?\n{MATH_INSTRUCTION}"}]) for a in range(4)}
    for calls in (grpo_calls, eval_calls):
        assert {json.dumps(p) for call in calls for p in call["prompts"]} <= expected
        completions = [c for call in calls for c in call["completions"]]
        # conversational completions, as TRL hands them, each ended by its first stop string (kept)
        assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in completions)
        texts = [c[0]["content"] for c in completions]
        assert all(truncate_at_stop(t, STOPS) == t for t in texts)
        assert sum(t[-1:] in STOPS for t in texts) >= len(texts) // 2  # most stopped at a letter
        assert {type(a) for call in calls for a in call["answer"]} == {str}
        assert all("completion_ids" in call and "trainer_state" in call for call in calls)
    assert {json.dumps(p) for p in eval_calls[0]["prompts"]} == expected
    # the same keyword arguments in both stages: the columns (the `problem` column too) and TRL's trainer arguments
    assert set(grpo_calls[0]) == set(eval_calls[0])
    assert {"problem", "answer", "completion_ids", "trainer_state", "log_extra", "log_metric"} <= set(eval_calls[0])


RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TEMPLATE_KEYS = ("prompt_template", "system_prompt", "instruction", "chat_template", "stop_sequences")


@pytest.mark.parametrize(
    ("rl", "evaluation", "template"),
    [
        ("rl_math.yaml", "eval_math.yaml", "math"),
        ("rl_code.yaml", "eval_code.yaml", "code"),
        ("rl_logic.yaml", "eval_logic.yaml", "logic"),
        ("rl_paper.yaml", "eval_paper.yaml", "plain"),
    ],
)
def test_each_domain_trains_and_evaluates_with_one_template_and_judge(rl, evaluation, template):
    train, test = (yaml.safe_load((RECIPES / name).read_text()) for name in (rl, evaluation))
    assert train["prompt_template"] == test["prompt_template"] == template
    assert {k: train.get(k) for k in TEMPLATE_KEYS} == {k: test.get(k) for k in TEMPLATE_KEYS}
    assert train["reward_funcs"] == [test["judge"]]
    assert train.get("prompt_column", "prompt") == test.get("prompt_column", "prompt")
    # and the suite's benchmarks of that domain use the same template and judge
    suite = yaml.safe_load((RECIPES / "eval_suite.yaml").read_text())
    for bench in suite["benchmarks"]:
        if bench["judge"] == test["judge"]:
            assert bench["prompt_template"] == template


def test_the_math_recipe_parses_with_its_columns():
    from trl_shaped.scripts.grpo import make_parser

    script_args, *_ = make_parser().parse_args_and_config(
        ["--config", str(RECIPES / "rl_math.yaml"), "--bf16", "false", "--use_cpu", "true"]
    )
    assert (script_args.prompt_column, script_args.answer_column) == ("problem", "answer")
    assert script_args.template == PROMPT_TEMPLATES["math"] and script_args.reward_funcs == ["math"]


def test_stop_sequences_reach_both_generation_backends():
    from trl_shaped.scripts.grpo import generation_stop_kwargs

    assert generation_stop_kwargs(("</answer>",), use_vllm=True) == {
        "stop": ["</answer>"],
        "include_stop_str_in_output": True,  # kept in the text, as transformers keeps it
    }
    assert generation_stop_kwargs(("</answer>",), use_vllm=False) == {"stop_strings": ["</answer>"]}
    assert generation_stop_kwargs((), use_vllm=True) == {}
