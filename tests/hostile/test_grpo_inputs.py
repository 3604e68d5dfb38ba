"""Hostile inputs to ShapedGRPOTrainer: each fails early with the error type and a message naming the argument."""

import importlib
import sys
from pathlib import Path

import pytest
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOTrainer

from trl_shaped import ShapedGRPOTrainer
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared GRPO test helpers live in tests/
common = importlib.import_module("_grpo_common")
arithmetic_prompts, arithmetic_solutions = common.arithmetic_prompts, common.arithmetic_solutions
grpo_config, tiny_policy, varied_reward = common.grpo_config, common.tiny_policy, common.varied_reward


@pytest.fixture
def no_trl_init(monkeypatch):
    """Fail the test if TRL's __init__ (model wrapping, reference loading, dataset work) is reached."""

    def refuse(*args, **kwargs):
        raise AssertionError("the error must be raised before GRPOTrainer.__init__ runs")

    monkeypatch.setattr(GRPOTrainer, "__init__", refuse)


def make(tmp_path, model=None, tokenizer=None, aux_dataset=None, **config):
    model_, tokenizer_ = tiny_policy()
    return ShapedGRPOTrainer(
        model if model is not None else model_, [varied_reward], grpo_config(tmp_path, **config),
        train_dataset=arithmetic_prompts(), processing_class=tokenizer or tokenizer_, aux_dataset=aux_dataset,
    )  # fmt: skip


def save_model(path, vocab_size):
    tokenizer = build_char_tokenizer()
    build_tiny_model(vocab_size, hidden_size=32, num_layers=1, tokenizer=tokenizer, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------------------------------------- vocabularies
@pytest.mark.parametrize("delta,which", [(7, "larger"), (-3, "smaller")])
@pytest.mark.parametrize("beta,diagnostics_steps", [(0.1, 0), (0.0, 1)])
def test_prior_with_another_vocabulary(tmp_path, delta, which, beta, diagnostics_steps):
    # Larger: a shape error at the first diagnostics step, or silent training against it; smaller: an IndexError
    vocab = len(build_char_tokenizer())
    prior = save_model(tmp_path / "prior", vocab + delta)
    with pytest.raises(ValueError, match=f"prior_model_name_or_path.*{which} vocabulary.*{vocab + delta}.*{vocab}"):
        make(
            tmp_path / "run", prior_model_name_or_path=prior, beta=beta, diagnostics_steps=diagnostics_steps,
        )  # fmt: skip


def test_tokenizer_larger_than_the_policy_embedding(tmp_path):
    tokenizer = build_char_tokenizer()
    small = build_tiny_model(len(tokenizer) - 2, hidden_size=32, num_layers=1, tokenizer=tokenizer, seed=0)
    with pytest.raises(ValueError, match=f"processing_class has {len(tokenizer)} tokens.*{len(tokenizer) - 2}"):
        make(tmp_path, model=small, tokenizer=tokenizer)


def test_padded_policy_vocabulary_is_accepted(tmp_path):
    tokenizer = build_char_tokenizer()
    padded = build_tiny_model(len(tokenizer) + 8, hidden_size=32, num_layers=1, tokenizer=tokenizer, seed=0)
    trainer = make(tmp_path, model=padded, tokenizer=tokenizer)
    assert trainer.prior_model is not None  # a copy of the padded policy, same rows


# ---------------------------------------------------------------------------------------------- aux_dataset
def test_aux_dataset_empty(tmp_path, no_trl_init):
    empty = Dataset.from_dict({"text": []})
    with pytest.raises(ValueError, match=r"aux_dataset is empty \(0 rows\).*shaping_aux_coef"):
        make(tmp_path, aux_dataset=empty, shaping_aux_coef=0.1)


def test_aux_dataset_wrong_columns(tmp_path, no_trl_init):
    wrong = Dataset.from_dict({"question": ["1+1="], "answer": ["2"]})
    with pytest.raises(ValueError, match=r"aux_dataset has columns \['answer', 'question'\].*'text'.*'prompt'"):
        make(tmp_path, aux_dataset=wrong, shaping_aux_coef=0.1)


def test_aux_dataset_not_a_dataset(tmp_path, no_trl_init):
    with pytest.raises(TypeError, match="aux_dataset must be a datasets.Dataset.*list"):
        make(tmp_path, aux_dataset=[{"text": "1+1=2"}], shaping_aux_coef=0.1)


def test_aux_dataset_all_rows_too_long(tmp_path):
    rows = arithmetic_solutions(5)
    with pytest.raises(ValueError, match="aux_dataset is empty after preparation: all 5 rows.*aux_max_length=3"):
        make(tmp_path, aux_dataset=rows, shaping_aux_coef=0.1, aux_max_length=3)  # the prompt "a+b=" is 4 tokens


def test_aux_dataset_some_rows_too_long_are_dropped_with_a_count(tmp_path, caplog):
    prompts = ["1+1=", "12345678+1="]
    rows = Dataset.from_dict({"prompt": prompts, "completion": ["2", "12345679"]})
    trainer = make(tmp_path, aux_dataset=rows, shaping_aux_coef=0.1, aux_max_length=8)
    assert len(trainer._aux_dataloader.dataset) == 1
    assert any("dropped 1 of 2 rows" in r.getMessage() for r in caplog.records)


def test_aux_dataset_non_string_value(tmp_path):
    rows = Dataset.from_dict({"text": ["1+1=2", None]})
    with pytest.raises(TypeError, match="aux_dataset column 'text', row 1: expected a string, got NoneType"):
        make(tmp_path, aux_dataset=rows, shaping_aux_coef=0.1)


@pytest.mark.parametrize("layout", ["text", "messages", "conversations", "input_ids"])
def test_aux_dataset_layouts_are_accepted(tmp_path, layout):
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    data = {
        "text": {"text": ["1+1=2", "2+2=4"]},
        "messages": {"messages": [[{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]] * 2},
        "conversations": {"conversations": [[{"from": "human", "value": "1+1="}, {"from": "gpt", "value": "2"}]] * 2},
        "input_ids": {"input_ids": [[5, 6, 7], [8, 9]]},
    }[layout]
    trainer = make(tmp_path, tokenizer=tokenizer, aux_dataset=Dataset.from_dict(data), shaping_aux_coef=0.1)
    batch = trainer._next_aux_batch()
    assert (batch["labels"] != -100).sum() > 0
    if layout == "messages" or layout == "conversations":
        expected = tokenizer("1+1=2")["input_ids"]
        assert batch["input_ids"][0][: len(expected)].tolist() == expected


# ---------------------------------------------------------------------------------------------- sync_ref_model
def _sync_config(tmp_path, **overrides):
    args = grpo_config(tmp_path, **overrides)
    args.sync_ref_model = True  # set after __post_init__: the config's own check is another part's
    return args


def test_sync_ref_model_with_beta_zero(tmp_path, no_trl_init):
    model, tokenizer = tiny_policy()
    with pytest.raises(ValueError, match="sync_ref_model=True needs beta != 0"):
        ShapedGRPOTrainer(
            model, [varied_reward], _sync_config(tmp_path, beta=0.0), train_dataset=arithmetic_prompts(),
            processing_class=tokenizer,
        )  # fmt: skip


def test_sync_ref_model_with_peft(tmp_path, no_trl_init):
    model, tokenizer = tiny_policy()
    with pytest.raises(NotImplementedError, match="sync_ref_model=True with a PEFT policy"):
        ShapedGRPOTrainer(
            model, [varied_reward], _sync_config(tmp_path, beta=0.1), train_dataset=arithmetic_prompts(),
            processing_class=tokenizer, peft_config=LoraConfig(r=2, target_modules=["q_proj"]),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------- other arguments
def test_args_of_another_type(tmp_path, no_trl_init):
    from trl import GRPOConfig

    model, _ = tiny_policy()
    with pytest.raises(ValueError, match="args must be a ShapedGRPOConfig, got GRPOConfig"):
        ShapedGRPOTrainer(model, [varied_reward], GRPOConfig(str(tmp_path), use_cpu=True, bf16=False, report_to=[]))


def test_aux_coef_without_aux_dataset(tmp_path, no_trl_init):
    with pytest.raises(ValueError, match="shaping_aux_coef > 0 needs an aux_dataset"):
        make(tmp_path, shaping_aux_coef=0.1)


def test_dynamic_sampling_with_an_iterable_dataset(tmp_path, no_trl_init):
    model, tokenizer = tiny_policy()
    with pytest.raises(ValueError, match="dynamic_sampling needs a map-style train_dataset"):
        ShapedGRPOTrainer(
            model, [varied_reward], grpo_config(tmp_path, dynamic_sampling=True),
            train_dataset=arithmetic_prompts().to_iterable_dataset(), processing_class=tokenizer,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# `trl-shaped grpo`: reward names, judge_args, templates and columns fail before the trainer is built
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reward_funcs", "mathh"], "reward_funcs: judge must be one of ['code', 'exact', 'math'"),
        (["--reward_funcs", "math", "--judge_args", '{"anchord": false}'], "judge 'math' takes no option ['anchord']"),
        (["--reward_funcs", "math", "code", "--judge_args", '{"anchored": false}'], "maps each reward function's name"),
        (["--reward_funcs", "code", "--judge_args", '{"limits": {"wall_tim": 2}}'], "limits of judge 'code'"),
        (["--prompt_template", "maths"], "invalid choice: 'maths' (choose from 'code', 'logic', 'math', 'plain')"),
        (["--chat_template", "sometimes"], "chat_template must be one of"),
    ],
)
def test_bad_reward_and_template_flags_are_usage_errors(args, message, capsys):
    from trl_shaped.cli import dispatch

    with pytest.raises(SystemExit) as exit_info:
        dispatch(["grpo", "--model_name_or_path", "m", "--bf16", "false", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_prompt_column_the_data_lack_is_named_before_the_trainer_is_built(tmp_path, no_trl_init):
    from trl_shaped.cli import dispatch

    data = tmp_path / "rl.jsonl"
    data.write_text('{"question": "1+1=", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"prompt_column 'problem' is not a column of the data; columns: \['answer'"):
        dispatch([
            "grpo", "--model_name_or_path", "m", "--dataset_data_files", f"train={data}", "--prompt_column", "problem",
            "--use_cpu", "true", "--bf16", "false", "--output_dir", str(tmp_path / "rl"),
        ])  # fmt: skip
