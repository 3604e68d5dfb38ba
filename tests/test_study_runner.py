"""The study runner: command lines of real-scale cells, checkpoint choice, and one tiny study end to end that is
killed mid-cell and resumed (finished cells are not retrained, the interrupted one resumes from its checkpoint)."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trl_shaped.study.config import StudyConfig
from trl_shaped.study.runner import launcher, newest_checkpoint, stage_commands

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def real_scale(**kwargs):
    defaults = dict(
        presets="precision,diversity",
        model_name_or_path="Qwen/Qwen3-0.6B-Base",
        stage1_recipe=str(RECIPES / "stage1_{preset}.yaml"),
        rl_recipe=str(RECIPES / "rl_paper.yaml"),
        eval_recipe=str(RECIPES / "eval_paper.yaml"),
    )
    return StudyConfig(**{**defaults, **kwargs})


def test_real_scale_cells_run_the_recipes_with_the_cells_overrides(tmp_path):
    no_gpu = "--bf16 false --use_cpu true"  # the GPU recipes ask for bf16, which a CPU-only host refuses
    config = real_scale(
        num_seeds=2, seed=7, stage1_args=f"--max_steps 5 {no_gpu}", rl_args=no_gpu, eval_dataset="data/test.jsonl"
    )
    assert config.preset_names() == ["ce", "precision", "diversity"]  # ce joins as the baseline
    assert config.seeds() == [7, 8]
    cell = tmp_path / "cells" / "precision" / "seed8"
    commands = dict(stage_commands(config, "precision", 8, cell))
    assert list(commands) == ["stage1", "eval_stage1", "rl", "eval_rl"]
    parsed = {}
    for stage, argv in commands.items():
        module = importlib.import_module(f"trl_shaped.scripts.{argv[0]}")
        parsed[stage] = module.make_parser().parse_args_and_config(argv[1:])  # every override is a real field
    _, sft_args, sft_model, _ = parsed["stage1"]
    assert sft_args.shaping_preset == "precision" and sft_args.seed == 8 and sft_args.max_steps == 5
    assert sft_args.output_dir == str(cell / "stage1") and sft_model.model_name_or_path == "Qwen/Qwen3-0.6B-Base"
    _, grpo_args, grpo_model, _ = parsed["rl"]
    assert grpo_model.model_name_or_path == str(cell / "stage1") and grpo_args.output_dir == str(cell / "rl")
    assert grpo_args.seed == 8 and grpo_args.epsilon_high == 0.28  # the recipe's value stays
    for stage, model in (("eval_stage1", "stage1"), ("eval_rl", "rl")):
        (evaluation,) = parsed[stage]
        assert evaluation.model_name_or_path == str(cell / model) and evaluation.seed == 8
        assert evaluation.output_dir == str(cell / stage) and evaluation.dataset_name == "data/test.jsonl"
        assert evaluation.num_samples == 128  # from the recipe


def test_launcher_and_config_errors(tmp_path):
    assert launcher(real_scale())[-2:] == ["-m", "trl_shaped"]
    accelerate = str(ROOT / "accelerate_configs" / "cpu.yaml")
    argv = launcher(real_scale(accelerate_config=accelerate))
    assert argv[1:3] == ["-m", "accelerate.commands.launch"] and argv[argv.index("--config_file") + 1] == accelerate
    assert real_scale(accelerate_config=accelerate).parallel(10) == 1
    with pytest.raises(ValueError, match="accelerate_config must be a file"):
        real_scale(accelerate_config=str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="stage1_recipe"):
        real_scale(stage1_recipe=str(tmp_path / "{preset}.yaml"))
    with pytest.raises(ValueError, match="presets must be"):
        StudyConfig(presets="ce,bogus")
    with pytest.raises(ValueError, match="equal_nll_tolerance"):
        StudyConfig(equal_nll_tolerance=0)
    with pytest.raises(ValueError, match="bpe_vocab_size must be >= 512"):
        StudyConfig(bpe_vocab_size=300)
    with pytest.raises(ValueError, match="max_parallel"):
        StudyConfig(max_parallel=0)


def test_newest_checkpoint_skips_one_interrupted_while_saving(tmp_path):
    assert newest_checkpoint(tmp_path / "missing") is None
    for step, complete in ((5, True), (10, True), (15, False), (9, True)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert newest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


def _attempts(cell: Path) -> list[str]:
    return (cell / "attempts.log").read_text().splitlines()


@pytest.mark.slow
def test_a_killed_study_resumes_without_retraining_finished_cells(tmp_path):
    out = tmp_path / "study"
    argv = [
        sys.executable, "-m", "trl_shaped", "study", "--presets", "ce,precision", "--num_seeds", "2",
        "--num_train_problems", "40", "--num_test_problems", "6", "--sft_steps", "40", "--checkpoints_per_stage", "4",
        "--grpo_steps", "2", "--eval_num_samples", "4", "--num_generations", "4", "--grpo_prompts_per_step", "2",
        "--output_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # First run, one cell at a time (ce seed 0, precision seed 0, ...): kill the whole process group once the
    # second cell has saved a stage-1 checkpoint.
    second = out / "cells" / "precision" / "seed0"
    first = out / "cells" / "ce" / "seed0"
    proc = subprocess.Popen(argv + ["--max_parallel", "1"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while newest_checkpoint(second / "stage1") is None:
            assert proc.poll() is None, "the study ended before the kill"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (first / "result.json").is_file() and not (second / "result.json").exists()
    finished_mtime = (first / "result.json").stat().st_mtime_ns
    assert _attempts(first) == ["stage1 resumed_from=None", "rl resumed_from=None"]

    # Rerun the same command: the finished cell is read back, the interrupted one resumes from its checkpoint.
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 cells (2 presets x 2 seeds), 1 already done; running 3" in done.stdout
    assert (first / "result.json").stat().st_mtime_ns == finished_mtime
    assert _attempts(first) == ["stage1 resumed_from=None", "rl resumed_from=None"]
    resumed = _attempts(second)
    assert resumed[0] == "stage1 resumed_from=None" and resumed[1].startswith("stage1 resumed_from=")
    step = int(resumed[1].rsplit("checkpoint-", 1)[1])
    assert 0 < step < 40
    result = json.loads((second / "result.json").read_text())
    assert result["stage1"]["resumed_from"].endswith(f"checkpoint-{step}")
    assert max(e["step"] for e in result["stage1"]["log_history"]) == 40  # trained to the end, not from scratch
    assert [e["step"] for e in result["stage1"]["log_history"] if "loss" in e][0] <= step  # the history carried over

    # The study's outputs, from the four cells
    results = json.loads((out / "results.json").read_text())
    assert sorted((c["preset"], c["seed"]) for c in results["cells"]) == [
        ("ce", 0), ("ce", 1), ("precision", 0), ("precision", 1),
    ]  # fmt: skip
    ce_nll = [json.loads((out / "cells" / "ce" / f"seed{s}" / "result.json").read_text())["eval_stage1"]
              ["diagnostics"]["nll"] for s in (0, 1)]  # fmt: skip
    assert results["presets"]["ce"]["stage1_nll"]["mean"] == pytest.approx(sum(ce_nll) / 2)
    report = (out / "report.md").read_text()
    assert report.index("## Verdicts") < report.index("## Every metric")
    for name in ("stage1.png", "pass_at_k.png", "rl_curves.png", "figures.json"):
        assert (out / name).stat().st_size > 0
    # the seed changes the initialisation: two seeds of one preset give different stage-1 models
    nll = results["values"]["stage1_nll"]["ce"]
    assert nll["0"] != nll["1"]
    # a third run does nothing but the report
    again = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "4 already done; running 0" in again.stdout


def test_study_recipes_parse(monkeypatch):
    from trl_shaped.scripts.study import make_parser

    monkeypatch.chdir(ROOT)  # the recipes name files relative to the repository root
    (tiny,) = make_parser().parse_args_and_config(["--config", str(RECIPES / "study_tiny.yaml")])
    assert tiny.builtin and len(tiny.preset_names()) == 5 and tiny.num_seeds == 6 and tiny.shaping_top_k == 100
    assert tiny.eval_num_samples == 32  # Pass@k up to 32, with the paper's k = n/2 = 16
    (qwen,) = make_parser().parse_args_and_config(["--config", str(RECIPES / "study_qwen3.yaml"), "--num_seeds", "5"])
    assert not qwen.builtin and qwen.num_seeds == 5 and qwen.parallel(15) == 1
    commands = dict(stage_commands(qwen, "head_reward", 42, Path("cell")))
    assert commands["stage1"][:3] == ["sft", "--config", "recipes/stage1_head_reward.yaml"]
    assert commands["stage1"][-2:] == ["--max_steps", "5000"]


@pytest.mark.slow
def test_a_real_scale_cell_runs_through_the_recipes(tmp_path, monkeypatch):
    import importlib.util

    import torch

    from trl_shaped.study.runner import run_study

    monkeypatch.chdir(tmp_path)  # the tiny recipes name runs/tiny/... relative to the working directory
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    spec = importlib.util.spec_from_file_location("make_tiny", RECIPES / "make_tiny.py")
    make_tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tiny)
    make_tiny.make_tiny("runs/tiny", num_train=40, num_test=4)
    config = StudyConfig(
        presets="ce",  # the stage-1 recipe says precision: the study's preset must win
        num_seeds=1,
        seed=3,
        output_dir="study",
        model_name_or_path="runs/tiny/model",
        stage1_recipe=str(RECIPES / "tiny_sft.yaml"),
        rl_recipe=str(RECIPES / "tiny_grpo.yaml"),
        eval_recipe=str(RECIPES / "tiny_eval.yaml"),
        stage1_args="--max_steps 4 --save_strategy steps --save_steps 2 --logging_steps 1",
        rl_args="--max_steps 2 --save_strategy steps --save_steps 1 --logging_steps 1",
        eval_args="--num_samples 2 --pass_k 1 2",
    )
    out = run_study(config)
    cell = out / "cells" / "ce" / "seed3"
    stage1_args = torch.load(cell / "stage1" / "training_args.bin", weights_only=False)
    assert stage1_args.shaping_preset == "ce" and stage1_args.seed == 3
    rl_args = torch.load(cell / "rl" / "training_args.bin", weights_only=False)
    assert rl_args.seed == 3 and rl_args.max_steps == 2
    result = json.loads((cell / "result.json").read_text())
    assert max(e["step"] for e in result["stage1"]["log_history"]) == 4  # read from the last checkpoint's state
    assert [e["step"] for e in result["rl"]["log_history"] if "reward" in e] == [1, 2]
    saved = json.loads((cell / "eval_rl" / "eval.json").read_text())
    assert result["eval_rl"]["pass_at_k"] == saved["pass_at_k"] and "per_problem" not in result["eval_rl"]
    assert result["eval_stage1"]["num_problems"] == 4
    # rerunning reads the finished cell back
    mtime = (cell / "result.json").stat().st_mtime_ns
    run_study(config)
    assert (cell / "result.json").stat().st_mtime_ns == mtime
