"""`trl-shaped` end to end on a tiny local model: each subcommand from a YAML config plus command-line overrides."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from trl_shaped import PAPER_PRESETS
from trl_shaped.cli import SUBCOMMANDS, dispatch, main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


@pytest.fixture(scope="module")
def stage1_dir(tiny_run_dir):
    """`trl-shaped sft` with the tiny recipe; overrides change the preset and the length of the run."""
    output_dir = tiny_run_dir / "stage1"
    trainer = dispatch([
        "sft", "--config", str(RECIPES / "tiny_sft.yaml"),
        "--model_name_or_path", str(tiny_run_dir / "model"),
        "--dataset_data_files", f"train={tiny_run_dir / 'data' / 'sft.jsonl'}",
        "--shaping_preset", "diversity", "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--output_dir", str(output_dir),
    ])  # fmt: skip
    return trainer, output_dir


def _weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_help_lists_the_subcommands():
    run = subprocess.run([sys.executable, "-m", "trl_shaped", "--help"], capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert name in run.stdout
        # the dispatcher's contract with a subcommand module (a new one only adds an entry and its module)
        module = importlib.import_module(f"trl_shaped.scripts.{name}")
        assert callable(module.run) and callable(module.make_parser), name
    assert {"sft", "grpo", "eval", "demo", "study"} <= set(SUBCOMMANDS)


def test_sft_yaml_plus_overrides(stage1_dir, tiny_run_dir):
    trainer, output_dir = stage1_dir
    args = trainer.args
    assert args.shaping == PAPER_PRESETS["diversity"]  # the override beats the YAML's `precision`
    assert args.max_steps == 3 and trainer.state.global_step == 3
    assert args.weight_decay == 0.1 and args.lr_scheduler_type == "warmup_stable_decay"  # from the YAML
    initial, trained = _weights(tiny_run_dir / "model"), _weights(output_dir)
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)


def test_grpo_from_the_stage1_checkpoint(stage1_dir, tiny_run_dir, tmp_path):
    _, stage1 = stage1_dir
    trainer = dispatch([
        "grpo", "--config", str(RECIPES / "tiny_grpo.yaml"),
        "--model_name_or_path", str(stage1),
        "--dataset_data_files", f"train={tiny_run_dir / 'data' / 'rl.jsonl'}",
        "--max_steps", "1", "--num_generations", "4", "--per_device_train_batch_size", "4",
        "--max_completion_length", "6", "--dynamic_sampling", "false", "--output_dir", str(tmp_path / "rl"),
    ])  # fmt: skip
    assert trainer.state.global_step == 1
    assert trainer.args.num_generations == 4 and trainer.args.epsilon_high == 0.28  # override, YAML
    assert trainer.reward_funcs[0].__name__ == "exact_answer_reward"
    assert (tmp_path / "rl" / "model.safetensors").is_file()
    assert _weights(tmp_path / "rl").keys() == _weights(stage1).keys()


def test_eval_yaml_plus_overrides(stage1_dir, tiny_run_dir, tmp_path):
    _, stage1 = stage1_dir
    result = dispatch([
        "eval", "--config", str(RECIPES / "tiny_eval.yaml"),
        "--model_name_or_path", str(stage1), "--dataset_name", str(tiny_run_dir / "data" / "test.jsonl"),
        "--num_samples", "2", "--pass_k", "1", "2", "--max_new_tokens", "4", "--no_progress",
        "--output_dir", str(tmp_path), "--run_name", "stage1",
    ])  # fmt: skip
    assert result["num_problems"] == 4 and result["num_samples"] == 2
    assert result["settings"]["diagnostics_top_k"] == 10  # from the YAML
    saved = json.loads((tmp_path / "stage1.json").read_text())
    assert saved["pass_at_k"] == result["pass_at_k"] and set(saved["pass_at_k"]) == {"1", "2"}
    assert saved["diagnostics"]["num_tokens"] > 0
    assert (tmp_path / "stage1.md").is_file() and (tmp_path / "stage1_pass_at_k.png").is_file()


def test_demo_quick_with_overrides(tmp_path):
    report_dir = dispatch([
        "demo", "--config", str(RECIPES / "demo_quick.yaml"), "--presets", "ce",
        "--num_train_problems", "20", "--num_test_problems", "4", "--sft_steps", "2", "--grpo_steps", "1",
        "--eval_num_samples", "2", "--output_dir", str(tmp_path / "report"),
    ])  # fmt: skip
    report_dir = Path(report_dir)
    assert report_dir == tmp_path / "report" and (report_dir / "report.md").is_file()
    results = json.loads((report_dir / "results.json").read_text())
    assert list(results["presets"]) == ["ce"]  # the override beat the YAML's three presets
    assert results["config"]["sft_steps"] == 2 and results["config"]["quick"] is True  # override, YAML


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sft", "--use_cpu", "true", "--shaping_preset", "nope"], "shaping-preset: invalid choice: 'nope'"),
        (["eval", "--num_samples", "4", "--pass_k", "8"], "pass_k values must be in [1, num_samples=4]"),
        (["eval", "--temperature", "hot"], "invalid float value: 'hot'"),
        (["demo", "--presets", "ce,bogus"], "presets must be 'all' or a comma-separated list"),
        (
            ["grpo", "--config", str(RECIPES / "tiny_grpo.yaml"), "--epsilon_high", "0.28", "--not_a_field", "1"],
            "not used by the HfArgumentParser: ['--not_a_field'",
        ),
    ],
)
def test_bad_values_fail_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        dispatch(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_yaml_key_fails(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("num_samples: 2\nnot_a_field: 3\n")
    with pytest.raises(SystemExit):
        dispatch(["eval", "--config", str(config)])
    assert "not_a_field" in capsys.readouterr().err


def test_unknown_subcommand_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        main(["train"])
    assert "invalid choice: 'train'" in capsys.readouterr().err


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "trl-shaped"  # pyproject's [project.scripts], made by pip install
    run = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True, env=dict(os.environ))
    assert run.returncode == 0 and "grpo" in run.stdout


def test_console_script_exits_zero_after_a_run(tmp_path):
    # The console script must turn a finished run into exit status 0, whatever the subcommand returns.
    script = Path(sys.executable).with_name("trl-shaped")
    done = subprocess.run(
        [str(script), "demo", "--presets", "ce", "--quick", "true", "--num_train_problems", "20",
         "--num_test_problems", "4", "--sft_steps", "2", "--grpo_steps", "1", "--eval_num_samples", "2",
         "--output_dir", str(tmp_path / "report")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "report" / "report.md").is_file()
