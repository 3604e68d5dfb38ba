"""The study's stage-1 arms: the paper's five presets (`presets: all`) and the opt-in `dft` arm (TRL's DFT loss), the
same arguments on both backends (the built-in cell's trainer, the real-scale `sft` command)."""

import importlib
from pathlib import Path

import pytest
from _sft_common import config, step_losses, text_dataset, tokenizer
from trl import SFTConfig, SFTTrainer

from trl_shaped.sft_trainer import ShapedSFTTrainer
from trl_shaped.study import builtin_cell
from trl_shaped.study.config import ALL_PRESETS, StudyConfig, stage1_arguments
from trl_shaped.study.runner import stage_commands
from trl_shaped.tasks.arithmetic import task_alphabet
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def test_all_is_the_papers_five_presets_and_dft_is_opt_in():
    assert StudyConfig(presets="all").preset_names() == list(ALL_PRESETS)
    assert "dft" not in StudyConfig(presets="all").preset_names()
    assert StudyConfig(presets="ce,precision,dft").preset_names() == ["ce", "precision", "dft"]
    assert StudyConfig(presets="dft").preset_names() == ["ce", "dft"]  # ce joins as the baseline
    assert StudyConfig(presets="all,dft").preset_names() == [*ALL_PRESETS, "dft"]
    with pytest.raises(ValueError, match="presets must be .*'dft'"):
        StudyConfig(presets="ce,dtf")


def test_stage1_arguments_of_each_arm():
    assert stage1_arguments("dft") == {"shaping_preset": "ce", "loss_type": "dft"}
    for preset in ALL_PRESETS:
        assert stage1_arguments(preset) == {"shaping_preset": preset}
    with pytest.raises(ValueError, match="arm must be one of"):
        stage1_arguments("bogus")


def _stage1_recipes(folder: Path, presets) -> str:
    """Stage-1 recipe files `<preset>.yaml` in `folder` (each naming its own preset); returns the study's pattern."""
    for preset in presets:
        (folder / f"{preset}.yaml").write_text(
            f"shaping_preset: {preset}\nmax_steps: 7\nlearning_rate: 3.0e-4\nbf16: false\n"
        )
    return str(folder / "{preset}.yaml")


def _real_scale(tmp_path, presets, recipes=("ce", "precision")) -> StudyConfig:
    return StudyConfig(
        presets=presets,
        model_name_or_path="Qwen/Qwen3-0.6B-Base",
        stage1_recipe=_stage1_recipes(tmp_path, recipes),
        rl_recipe=str(RECIPES / "rl_paper.yaml"),
        eval_recipe=str(RECIPES / "eval_paper.yaml"),
        stage1_args="--max_steps 5",
    )


def test_real_scale_dft_cell_runs_the_ce_recipe_with_the_dft_loss(tmp_path):
    study = _real_scale(tmp_path, "ce,precision,dft")
    cell = tmp_path / "cells" / "dft" / "seed3"
    stage1 = dict(stage_commands(study, "dft", 3, cell))["stage1"]
    assert stage1[:3] == ["sft", "--config", str(tmp_path / "ce.yaml")]
    sft = importlib.import_module(f"trl_shaped.scripts.{stage1[0]}")
    _, args, model, _ = sft.make_parser().parse_args_and_config(stage1[1:])
    assert args.loss_type == "dft" and args.shaping_preset == "ce" and args.shaping.is_cross_entropy
    assert args.seed == 3 and args.max_steps == 5 and args.output_dir == str(cell / "stage1")
    assert args.learning_rate == 3e-4  # the recipe's value stays
    assert model.model_name_or_path == "Qwen/Qwen3-0.6B-Base"
    # a paper preset keeps its own recipe and the stock loss type
    precision = dict(stage_commands(study, "precision", 3, cell))["stage1"]
    _, args, _, _ = sft.make_parser().parse_args_and_config(precision[1:])
    assert precision[2] == str(tmp_path / "precision.yaml")
    assert args.shaping_preset == "precision" and args.loss_type == "nll"


def test_real_scale_dft_needs_only_the_ce_recipe(tmp_path):
    assert _real_scale(tmp_path, "dft", recipes=("ce",)).preset_names() == ["ce", "dft"]
    with pytest.raises(ValueError, match="no file for preset 'precision'"):
        _real_scale(tmp_path, "precision", recipes=("ce",))


class _Captured(Exception):
    pass


@pytest.mark.parametrize(("arm", "loss_type", "preset"), [("dft", "dft", "ce"), ("precision", "nll", "precision")])
def test_builtin_stage1_trains_with_the_arms_arguments(tmp_path, monkeypatch, arm, loss_type, preset):
    captured = {}

    def trainer(*args, **kwargs):  # stands in for ShapedSFTTrainer: keep its arguments, train nothing
        captured.update(kwargs)
        raise _Captured

    monkeypatch.setattr(builtin_cell, "ShapedSFTTrainer", trainer)
    study = StudyConfig(
        presets=arm, num_train_problems=20, num_test_problems=4, tokenizer="char", shaping_top_k=4, sft_steps=4
    )
    data = builtin_cell.task_data(study)
    with pytest.raises(_Captured):
        builtin_cell.train_stage1(arm, 0, study, data, build_char_tokenizer(task_alphabet()), tmp_path)
    args = captured["args"]
    assert args.loss_type == loss_type and args.shaping_preset == preset
    assert args.shaping.is_cross_entropy == (preset == "ce")


def test_the_dft_arms_arguments_train_like_stock_trl_dft(tmp_path):
    tok = tokenizer()

    def model():
        return build_tiny_model(len(tok), tokenizer=tok, hidden_size=32, seed=0)

    shaped = ShapedSFTTrainer(
        model=model(),
        args=config(tmp_path / "dft", **stage1_arguments("dft")),
        train_dataset=text_dataset(),
        processing_class=tok,
    )
    shaped.train()
    common = config(tmp_path / "stock").to_dict()
    fields = ("output_dir", "max_steps", "per_device_train_batch_size", "learning_rate", "logging_steps", "seed")
    stock = SFTTrainer(
        model=model(),
        args=SFTConfig(
            loss_type="dft",
            report_to="none",
            save_strategy="no",
            bf16=False,
            disable_tqdm=True,
            **{k: common[k] for k in fields},
        ),  # fmt: skip
        train_dataset=text_dataset(),
        processing_class=tok,
    )
    stock.train()
    assert step_losses(shaped)[0] == pytest.approx(step_losses(stock)[0], rel=1e-6)
    assert step_losses(shaped) == pytest.approx(step_losses(stock), rel=1e-5)
    # and it is not the ce arm's loss: the DFT weighting (p < 1 on a fresh model) makes the first loss smaller
    ce = ShapedSFTTrainer(
        model=model(),
        args=config(tmp_path / "ce", **stage1_arguments("ce")),
        train_dataset=text_dataset(),
        processing_class=tok,
    )
    ce.train()
    assert step_losses(shaped)[0] < 0.5 * step_losses(ce)[0]
