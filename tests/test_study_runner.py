"""The study runner: command lines of real-scale cells, checkpoint choice, the cells' fingerprints (a rerun with other
settings is refused, `overwrite` recomputes only what differs), the per-cell lock (a killed holder blocks nobody,
two processes on one study train each cell once), damaged cell files, and one tiny study end to end that is killed
mid-cell and resumed (finished cells are not retrained, the interrupted one resumes from its checkpoint)."""

import hashlib
import importlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trl_shaped.checkpoints import MANIFEST_NAME, last_complete_checkpoint, resolve_resume
from trl_shaped.study import cell_runner, runner
from trl_shaped.study.cells import (
    RESULT,
    StaleCells,
    cell_dir,
    cell_fingerprint,
    cell_lock,
    fingerprint_changes,
    tokenizer_fingerprint,
)
from trl_shaped.study.config import STUDY_LEVEL_FIELDS, StudyConfig
from trl_shaped.study.runner import BUILTIN_CELL_MODULE, launcher, run_cells, run_stage, stage_commands
from trl_shaped.tasks.arithmetic import ArithmeticTask

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def real_scale(**kwargs):
    defaults = dict(
        presets="precision,diversity",
        model_name_or_path="Qwen/Qwen3-0.6B-Base",
        stage1_recipe=str(RECIPES / "stage1.yaml"),
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
        assert evaluation.tracker_run_name == config.run_name("precision", 8, stage)  # the file name stays "eval"
        assert evaluation.project == config.study_name and evaluation.run_name == "eval"


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


def _checkpoint(folder: Path, step: int, complete: bool) -> Path:
    """A `checkpoint-<step>` folder with its trainer state, recorded in the run manifest as complete or not."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": [{"step": step}]}))
    manifest = folder / MANIFEST_NAME
    data = json.loads(manifest.read_text()) if manifest.is_file() else {"runs": {}, "checkpoints": {}, "seq": 0}
    data["checkpoints"][path.name] = {"run": "r", "complete": complete, "seq": step}
    manifest.write_text(json.dumps(data))
    return path


def test_a_stage_resumes_from_the_newest_complete_checkpoint_not_a_newer_incomplete_one(tmp_path, monkeypatch):
    # checkpoint-4 has a trainer_state.json but its run stopped while saving it (the manifest says so): the rerun
    # resumes from checkpoint-2, which the trainer's own rule (resolve_resume) accepts
    cell = tmp_path / "cells" / "ce" / "seed0"
    older = _checkpoint(cell / "stage1", 2, complete=True)
    _checkpoint(cell / "stage1", 4, complete=False)
    assert last_complete_checkpoint(cell / "stage1") == str(older)
    commands = []

    def fake_run(argv, log, env):  # the training run: it ends with a complete checkpoint-6
        commands.append(argv)
        if len(commands) == 1:
            _checkpoint(cell / "stage1", 6, complete=True)

    monkeypatch.setattr(cell_runner, "_run", fake_run)
    record = run_stage(real_scale(), "stage1", ["sft", "--output_dir", str(cell / "stage1")], cell)
    assert commands[0][-2:] == ["--resume_from_checkpoint", str(older)]
    assert resolve_resume(commands[0][-1], cell / "stage1") == str(older)
    assert record["resumed_from"] == str(older) and record["log_history"] == [{"step": 6}]
    assert json.loads((cell / "stage1.json").read_text()) == record
    # the record is read back, not rerun; a damaged (cut) record is moved aside and the stage runs again
    assert run_stage(real_scale(), "stage1", ["sft"], cell) == record and len(commands) == 1
    (cell / "stage1.json").write_text('{"seconds": 1.5, "resumed_fr')
    run_stage(real_scale(), "stage1", ["sft"], cell)
    assert len(commands) == 2 and commands[1][-1] == str(cell / "stage1" / "checkpoint-6")
    assert (cell / "stage1.json.damaged").read_text() == '{"seconds": 1.5, "resumed_fr'


def tiny(**kwargs) -> StudyConfig:
    values = dict(presets="ce", num_seeds=1, num_train_problems=40, num_test_problems=6, sft_steps=4, grpo_steps=1,
                  eval_num_samples=2, num_generations=2, grpo_prompts_per_step=2, tokenizer="char", shaping_top_k=4)  # fmt: skip
    return StudyConfig(**{**values, **kwargs})


@pytest.fixture
def fake_cells(monkeypatch):
    """The built-in cell worker replaced by one that records its start in the cell's attempts.log and writes a result
    holding the settings it read: the runner's decisions without training."""

    def fake_run(argv, log, env, hand_over=None):
        assert argv[1:3] == ["-m", BUILTIN_CELL_MODULE]
        config_path, preset, seed, cell = argv[3:]
        config = json.loads(Path(config_path).read_text())
        with open(Path(cell) / "attempts.log", "a") as stream:
            stream.write("start\n")
        result = {"preset": preset, "seed": int(seed), "sft_steps": config["sft_steps"]}
        (Path(cell) / RESULT).write_text(json.dumps(result))

    monkeypatch.setattr(cell_runner, "_run", fake_run)


def _starts(out: Path, preset: str, seed: int) -> int:
    log = cell_dir(out, preset, seed) / "attempts.log"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def test_a_rerun_with_other_settings_is_refused_and_overwrite_recomputes_only_what_differs(
    tmp_path, fake_cells, capsys
):
    out = tmp_path / "study"
    cells = run_cells(tiny(num_seeds=2, output_dir=str(out)), out)
    assert [c["sft_steps"] for c in cells] == [4, 4] and _starts(out, "ce", 0) == _starts(out, "ce", 1) == 1
    # other settings, same directory: refused before any compute, in one line naming the field and the ways on
    with pytest.raises(StaleCells) as refused:
        run_cells(tiny(num_seeds=2, sft_steps=6, output_dir=str(out)), out)
    message = str(refused.value)
    assert "\n" not in message and "sft_steps: 4 -> 6" in message and "ce seed 0, ce seed 1" in message
    assert "--output_dir" in message and "--overwrite true" in message
    assert _starts(out, "ce", 0) == _starts(out, "ce", 1) == 1
    # the command line prints that line alone and exits 2
    from trl_shaped.scripts.study import run

    argv = ["--presets", "ce", "--num_seeds", "2", "--num_train_problems", "40", "--num_test_problems", "6",
            "--sft_steps", "6", "--grpo_steps", "1", "--eval_num_samples", "2", "--num_generations", "2",
            "--grpo_prompts_per_step", "2", "--tokenizer", "char", "--shaping_top_k", "4", "--output_dir", str(out)]  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(argv, prog="trl-shaped study")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"trl-shaped study: error: {message}"]
    # study-level fields change no cell: more seeds, other intervals, another parallelism reuse the finished ones
    assert "sft_steps" not in STUDY_LEVEL_FIELDS and "confidence" in STUDY_LEVEL_FIELDS
    run_cells(tiny(num_seeds=3, confidence=0.9, max_parallel=1, output_dir=str(out)), out)
    assert [_starts(out, "ce", s) for s in (0, 1, 2)] == [1, 1, 1]
    # overwrite: seed 0 with 6 steps (seeds 1 and 2 are not part of this run), then back to 4 steps for all three:
    # only seed 0 differs, and only seed 0 is recomputed
    cells = run_cells(tiny(num_seeds=1, sft_steps=6, overwrite=True, output_dir=str(out)), out)
    assert cells[0]["sft_steps"] == 6 and [_starts(out, "ce", s) for s in (0, 1, 2)] == [1, 1, 1]  # cleared, rerun
    with pytest.raises(StaleCells, match=r"\(ce seed 0: sft_steps: 6 -> 4\)"):
        run_cells(tiny(num_seeds=3, output_dir=str(out)), out)
    cells = run_cells(tiny(num_seeds=3, overwrite=True, output_dir=str(out)), out)
    assert [c["sft_steps"] for c in cells] == [4, 4, 4]
    assert [_starts(out, "ce", s) for s in (0, 1, 2)] == [1, 1, 1]  # seed 0: its folder cleared, one start since
    assert json.loads((cell_dir(out, "ce", 1) / "fingerprint.json").read_text()) == cell_fingerprint(tiny(), "ce", 1)


def test_cells_and_tokenizers_without_a_fingerprint_count_as_differing(tmp_path, fake_cells):
    out = tmp_path / "study"
    legacy = cell_dir(out, "ce", 0)
    legacy.mkdir(parents=True)
    (legacy / RESULT).write_text(json.dumps({"preset": "ce", "seed": 0, "sft_steps": 4}))  # before fingerprints
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(StaleCells, match=r"ce seed 0, the tokenizer: no readable fingerprint.json") as refused:
        run_cells(tiny(output_dir=str(out)), out)
    assert "--overwrite true" in str(refused.value)
    run_cells(tiny(output_dir=str(out), overwrite=True), out)
    assert not (out / "tokenizer").exists() and _starts(out, "ce", 0) == 1  # rebuilt by the next cell; recomputed


def test_the_fingerprint_covers_the_task_the_code_and_at_real_scale_the_recipes(tmp_path, monkeypatch):
    config = tiny()
    fingerprint = cell_fingerprint(config, "ce", 0)
    assert fingerprint["task.max_operand"] == ArithmeticTask().max_operand
    assert fingerprint["num_rl_problems"] == config.num_rl_problems  # the RL split is part of the cell
    assert not set(fingerprint) & set(STUDY_LEVEL_FIELDS)
    # the code: every file of the package but those that only report or launch, and the libraries' versions
    source = fingerprint["trl_shaped source"]
    assert source["trl_shaped/loss.py"] == hashlib.sha256((ROOT / "trl_shaped/loss.py").read_bytes()).hexdigest()[:16]
    assert "trl_shaped/study/builtin_cell.py" in source and "trl_shaped/study/report.py" not in source
    assert fingerprint["versions"]["torch"] == importlib.metadata.version("torch")
    assert set(fingerprint["versions"]) >= {"torch", "transformers", "trl", "peft", "accelerate", "deepspeed"}
    # the task the cell actually builds is the one fingerprinted, with its judge
    config = tiny(task_args='{"solutions_per_problem": 5}')
    assert cell_fingerprint(config, "ce", 0)["task.solutions_per_problem"] == 5
    assert config.study_task().solutions_per_problem == 5
    assert cell_fingerprint(config, "ce", 0)["task.judge"] == "exact"
    # real scale: a recipe's contents, for the presets that use it
    for preset in ("ce", "precision"):
        (tmp_path / f"{preset}.yaml").write_text("max_steps: 10\n")
    config = real_scale(presets="precision", stage1_recipe=str(tmp_path / "{preset}.yaml"))
    before = {p: cell_fingerprint(config, p, 0) for p in ("ce", "precision")}
    (tmp_path / "precision.yaml").write_text("max_steps: 20\n")
    assert cell_fingerprint(config, "ce", 0) == before["ce"]
    changed = {k for k, v in cell_fingerprint(config, "precision", 0).items() if before["precision"][k] != v}
    assert changed == {"stage1 recipe contents"}


def test_a_cell_depends_on_its_own_seed_and_only_on_the_fields_it_uses(tmp_path):
    # built-in: every cell's problems come from the first seed, recorded as data_seed; the cell's seed is its own
    assert cell_fingerprint(tiny(seed=0), "ce", 1)["seed"] == 1
    assert cell_fingerprint(tiny(seed=0), "ce", 1)["data_seed"] == 0
    assert cell_fingerprint(tiny(seed=1), "ce", 1)["data_seed"] == 1
    # fields the built-in cell does not read change nothing: the Slurm GPU count, the real-scale arguments
    assert cell_fingerprint(tiny(slurm_gpus_per_cell=4), "ce", 0) == cell_fingerprint(tiny(), "ce", 0)
    assert cell_fingerprint(tiny(rl_args="--max_steps 3"), "ce", 0) == cell_fingerprint(tiny(), "ce", 0)
    # real scale: a cell depends on its own seed, not the study's first one; built-in fields do not count
    assert cell_fingerprint(real_scale(seed=0), "ce", 1) == cell_fingerprint(real_scale(seed=1), "ce", 1)
    assert cell_fingerprint(real_scale(num_threads=4, sft_steps=9), "ce", 1) == cell_fingerprint(real_scale(), "ce", 1)
    assert cell_fingerprint(real_scale(rl_args="--max_steps 3"), "ce", 1) != cell_fingerprint(real_scale(), "ce", 1)


def test_the_world_size_a_cell_trains_at_is_part_of_it(tmp_path):
    zero2 = str(ROOT / "accelerate_configs" / "zero2.yaml")
    local = cell_fingerprint(real_scale(accelerate_config=zero2), "ce", 0)
    slurm = real_scale(accelerate_config=zero2, launcher="slurm", dry_run=True)
    assert local["world_size"] == yaml.safe_load(Path(zero2).read_text())["num_processes"]
    assert cell_fingerprint(slurm, "ce", 0)["world_size"] == 8 != local["world_size"]
    assert "world_size: " in "; ".join(fingerprint_changes(local, cell_fingerprint(slurm, "ce", 0)))
    assert cell_fingerprint(tiny(), "ce", 0)["world_size"] == 1


def test_real_scale_data_and_model_count_by_their_contents(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "model.safetensors").write_bytes(b"\0" * 300_000)
    config = real_scale(eval_dataset=str(data), model_name_or_path=str(model))
    before = cell_fingerprint(config, "ce", 0)
    assert before["eval_rl dataset_name"] == before["eval_stage1 dataset_name"]
    data.write_text('{"prompt": "1+1=", "answer": "3"}\n')
    (model / "config.json").write_text('{"hidden_size": 16}')
    after = cell_fingerprint(config, "ce", 0)
    assert {k for k in before if before[k] != after[k]} == {
        "eval_stage1 dataset_name", "eval_rl dataset_name", "model revision",
    }  # fmt: skip
    # a hub name counts by the revision of the local hub cache when it has one
    assert cell_fingerprint(real_scale(), "ce", 0)["model revision"].startswith("Qwen/Qwen3-0.6B-Base")


def test_an_edit_of_the_package_or_a_library_upgrade_is_refused_naming_it(tmp_path, monkeypatch):
    import shutil

    from trl_shaped.study import cells

    out = tmp_path / "study"
    cell = cell_dir(out, "ce", 0)
    cell.mkdir(parents=True)
    (cell / "fingerprint.json").write_text(json.dumps(cell_fingerprint(tiny(output_dir=str(out)), "ce", 0)))
    (cell / RESULT).write_text(json.dumps({"preset": "ce", "seed": 0}))
    assert runner.prepare_cells(tiny(output_dir=str(out)), out)[1] == []  # done, same settings
    # a library upgrade
    versions = cells.dependency_versions()
    monkeypatch.setattr(cells, "dependency_versions", lambda: versions | {"trl": "99.0"})
    with pytest.raises(StaleCells, match=r"versions trl: '[^']+' -> '99.0'"):
        runner.prepare_cells(tiny(output_dir=str(out)), out)
    monkeypatch.undo()
    # an edit of the package, run as a user would: a copy of it with a line appended to loss.py
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "trl_shaped", copy / "trl_shaped", ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "trl_shaped" / "loss.py", "a") as stream:
        stream.write("\n# an edit\n")
    argv = [sys.executable, "-m", "trl_shaped", "study", "--presets", "ce", "--num_seeds", "1", "--num_train_problems",
            "40", "--num_test_problems", "6", "--sft_steps", "4", "--grpo_steps", "1", "--eval_num_samples", "2",
            "--num_generations", "2", "--grpo_prompts_per_step", "2", "--tokenizer", "char", "--shaping_top_k", "4",
            "--output_dir", str(out)]  # as tiny()  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(copy)}
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)  # the copy is imported
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "trl_shaped source: trl_shaped/loss.py changed" in line and "--overwrite true" in line


def test_a_lock_held_by_a_killed_process_blocks_nobody(tmp_path):
    from filelock import Timeout

    cell = tmp_path / "cells" / "ce" / "seed0"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from trl_shaped.study.cells import cell_lock; "
         "lock = cell_lock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)", str(cell)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Timeout):
            cell_lock(cell).acquire(timeout=0)  # held by the live process
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.wait()
    lock = cell_lock(cell)
    lock.acquire(timeout=0)  # the kernel released the flock with the process
    assert lock.is_locked
    lock.release()


def test_a_second_caller_waits_for_the_running_cell_and_reads_its_result(tmp_path, fake_cells, capsys):
    import threading

    out = tmp_path / "study"
    config = tiny(output_dir=str(out))
    cell = cell_dir(out, "ce", 0)
    (tmp_path / "fingerprint.json").write_text(json.dumps(cell_fingerprint(config, "ce", 0)))
    (tmp_path / "result.json").write_text(json.dumps({"preset": "ce", "seed": 0, "by": "the other process"}))
    # another process runs the cell: it holds the lock until told to finish, then writes the cell's files and exits
    holder = subprocess.Popen(
        [sys.executable, "-c", "import shutil, sys; from pathlib import Path; from trl_shaped.study.cells import "
         "cell_lock; cell, files = Path(sys.argv[1]), Path(sys.argv[2]); lock = cell_lock(cell); lock.acquire(); "
         "print('held', flush=True); sys.stdin.readline(); cell.mkdir(parents=True); "
         "[shutil.copy(files / n, cell / n) for n in ('fingerprint.json', 'result.json')]", str(cell), str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    returned = []
    caller = threading.Thread(target=lambda: returned.append(runner.run_cell(config, "ce", 0, out)))
    caller.start()
    printed = ""
    while "waiting" not in printed:
        assert caller.is_alive()
        printed += capsys.readouterr().out
        time.sleep(0.05)
    assert "[study] ce seed 0: another process is running this cell; waiting for it to finish" in printed
    holder.communicate("go\n", timeout=60)
    caller.join(timeout=60)
    assert returned == [{"preset": "ce", "seed": 0, "by": "the other process"}]
    assert _starts(out, "ce", 0) == 0  # read back, not run again


def test_a_damaged_result_is_rebuilt_and_a_damaged_stage_record_recomputed(tmp_path, fake_cells, capsys):
    out = tmp_path / "study"
    run_cells(tiny(output_dir=str(out)), out)
    result = cell_dir(out, "ce", 0) / RESULT
    result.write_text(result.read_text()[:10])  # cut, as a full disk or an interrupted copy leaves it
    capsys.readouterr()
    (cell,) = run_cells(tiny(output_dir=str(out)), out)
    assert cell == {"preset": "ce", "seed": 0, "sft_steps": 4} and _starts(out, "ce", 0) == 2
    assert f"{result} is damaged (not valid JSON" in capsys.readouterr().out
    assert (result.parent / "result.json.damaged").is_file()
    # the built-in cell's stage records: a damaged one is recomputed, an intact one read back
    from trl_shaped.study.builtin_cell import _stage

    (result.parent / "stage1.json").write_text('{"seconds": 3')
    assert _stage(result.parent, "stage1", lambda: {"seconds": 4}) == {"seconds": 4}
    assert _stage(result.parent, "stage1", lambda: pytest.fail("recomputed")) == {"seconds": 4}


def test_the_built_in_tokenizer_refuses_other_settings(tmp_path):
    from trl_shaped.study.builtin_cell import shared_tokenizer, task_data

    config = tiny()
    data = task_data(config)
    tokenizer = shared_tokenizer(config, data, tmp_path / "tokenizer")
    assert json.loads((tmp_path / "tokenizer" / "fingerprint.json").read_text()) == tokenizer_fingerprint(config)
    assert shared_tokenizer(config, data, tmp_path / "tokenizer").get_vocab() == tokenizer.get_vocab()
    with pytest.raises(RuntimeError, match="built with other settings.*corpus sha256: "):
        shared_tokenizer(tiny(num_train_problems=50, tokenizer="bpe"), task_data(tiny(num_train_problems=50)),
                         tmp_path / "tokenizer")  # fmt: skip
    # the text it is trained on: more test problems change the stage-1 text (one generator draws all problems)
    bpe = tiny(tokenizer="bpe")
    assert tokenizer_fingerprint(bpe) != tokenizer_fingerprint(tiny(tokenizer="bpe", num_test_problems=7))
    assert tokenizer_fingerprint(bpe) == tokenizer_fingerprint(tiny(tokenizer="bpe", sft_steps=9))


TINY_ARGS = ["--presets", "ce", "--num_seeds", "1", "--num_train_problems", "24", "--num_test_problems", "4",
             "--sft_steps", "4", "--grpo_steps", "1", "--eval_num_samples", "2", "--num_generations", "2",
             "--grpo_prompts_per_step", "2", "--hidden_size", "16", "--num_layers", "1", "--tokenizer", "char",
             "--shaping_top_k", "4", "--checkpoints_per_stage", "2"]  # fmt: skip


@pytest.mark.slow  # three processes start torch and transformers
def test_two_processes_on_one_study_train_each_cell_once(tmp_path):
    out = tmp_path / "study"
    argv = [sys.executable, "-m", "trl_shaped", "study", *TINY_ARGS, "--output_dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    cell = out / "cells" / "ce" / "seed0"
    assert _attempts(cell) == ["stage1 resumed_from=None", "rl resumed_from=None"]  # one start per stage
    waited = [o for o in outputs if "ce seed 0: another process is running this cell; waiting" in o]
    assert len(waited) == 1, outputs
    # the cut result.json of the finished cell is rebuilt from its stage records, with no training
    result = json.loads((cell / RESULT).read_text())
    (cell / RESULT).write_text((cell / RESULT).read_text()[:100])
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "result.json is damaged" in again.stdout, again.stdout[-3000:] + again.stderr
    assert _attempts(cell) == ["stage1 resumed_from=None", "rl resumed_from=None"]
    rebuilt = json.loads((cell / RESULT).read_text())
    assert {k: rebuilt[k] for k in ("stage1", "eval_stage1", "rl", "eval_rl")} == {
        k: result[k] for k in ("stage1", "eval_stage1", "rl", "eval_rl")
    }


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
        while last_complete_checkpoint(second / "stage1") is None:
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
    assert commands["stage1"][:5] == ["sft", "--config", "recipes/stage1.yaml", "--shaping_preset", "head_reward"]
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
        rl_args="--max_steps 2 --logging_steps 1",  # the recipe saves no checkpoint: the curves must not need one
        eval_args="--num_samples 2 --pass_k 1 2",
    )
    out = run_study(config)
    cell = out / "cells" / "ce" / "seed3"
    stage1_args = torch.load(cell / "stage1" / "training_args.bin", weights_only=False)
    assert stage1_args.shaping_preset == "ce" and stage1_args.seed == 3
    rl_args = torch.load(cell / "rl" / "training_args.bin", weights_only=False)
    assert rl_args.seed == 3 and rl_args.max_steps == 2
    result = json.loads((cell / "result.json").read_text())
    assert max(e["step"] for e in result["stage1"]["log_history"]) == 4
    assert not list((cell / "rl").glob("checkpoint-*"))
    assert [e["step"] for e in result["rl"]["log_history"] if "reward" in e] == [1, 2]  # the stage's log_history.json
    figures = json.loads((out / "figures.json").read_text())
    assert list(figures["rl_curves"]["ce"]["reward"]) == ["1", "2"] and (out / "rl_curves.png").is_file()
    saved = json.loads((cell / "eval_rl" / "eval.json").read_text())
    assert result["eval_rl"]["pass_at_k"] == saved["pass_at_k"] and "per_problem" not in result["eval_rl"]
    assert result["eval_stage1"]["num_problems"] == 4
    # rerunning reads the finished cell back
    mtime = (cell / "result.json").stat().st_mtime_ns
    run_study(config)
    assert (cell / "result.json").stat().st_mtime_ns == mtime


def _pids_running(*words: str) -> list[int]:
    """The processes whose command line holds every one of `words`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and all(word in cmdline for word in words):
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # a zombie has ended (its parent has not collected it yet)


def test_a_child_dies_with_its_killed_parent(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys; from trl_shaped.study.children import start_child, wait_child; "
         "child = start_child([sys.executable, '-c', 'import time; time.sleep(600)']); print(child.pid, flush=True); "
         "wait_child(child)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    child = int(parent.stdout.readline())
    assert not _gone(child)
    parent.kill()  # SIGKILL: no handler runs in the parent; the kernel signals the child
    parent.wait()
    while not _gone(child):
        time.sleep(0.05)


@pytest.mark.slow  # two studies start torch
def test_a_study_stopped_with_sigterm_leaves_no_worker_and_a_rerun_completes(tmp_path):
    out = tmp_path / "study"
    argv = [sys.executable, "-m", "trl_shaped", "study", *TINY_ARGS[:-2], "--checkpoints_per_stage", "4",
            "--output_dir", str(out)]  # fmt: skip
    argv[argv.index("--sft_steps") + 1] = "60"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cell = out / "cells" / "ce" / "seed0"
    study = subprocess.Popen(
        argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while not ((cell / "attempts.log").is_file() and _pids_running("trl_shaped.study.builtin_cell", str(cell))):
            assert study.poll() is None, "the study ended before the signal"
            time.sleep(0.05)
        (worker,) = _pids_running("trl_shaped.study.builtin_cell", str(cell))
        study.send_signal(signal.SIGTERM)  # to the study process only, not its group
        assert study.wait() == -signal.SIGTERM
    finally:
        if study.poll() is None:
            os.killpg(study.pid, signal.SIGKILL)
    while not _gone(worker):  # the worker ends with the study
        time.sleep(0.05)
    assert not (cell / RESULT).exists()  # it did not go on writing the cell
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [line.split(" ")[0] for line in _attempts(cell)] == ["stage1", "stage1", "rl"]


@pytest.mark.slow  # the printed command starts torch
def test_a_cell_computed_by_its_printed_dry_run_command_is_accepted(tmp_path, capsys):
    import shlex

    from trl_shaped.study.runner import run_study

    out = tmp_path / "study"
    config = tiny(output_dir=str(out), hidden_size=16, num_layers=1, dry_run=True)
    run_study(config)
    commands = [line for line in capsys.readouterr().out.splitlines() if line and not line.startswith("#")]
    (command,) = commands
    words = shlex.split(command)
    env = {**os.environ, "PYTHONPATH": str(ROOT)} | dict(w.split("=", 1) for w in words if "=" in w.split(" ")[0])
    done = subprocess.run([w for w in words if "=" not in w or w.startswith("-")], env=env, cwd=os.getcwd(),
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config.dry_run = False
    cells, todo = runner.prepare_cells(config, out)
    assert cells == [("ce", 0)] and todo == []  # taken as done
    assert runner.finished_cells(config, out)[1] == []  # and by --report_only


def test_where_flock_is_missing_the_cell_lock_falls_back_and_still_excludes(tmp_path, monkeypatch):
    import errno
    import fcntl
    import tomllib
    import warnings

    from filelock import Timeout
    from packaging.requirements import Requirement
    from packaging.version import Version

    # the floor in pyproject.toml is a filelock that falls back (3.24: earlier ones raise NotImplementedError)
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (floor,) = [Requirement(d).specifier for d in dependencies if Requirement(d).name == "filelock"]
    assert floor.contains(Version("3.24")) and not floor.contains(Version("3.23.9"))
    real_flock = fcntl.flock

    def no_flock(fd, operation):  # a filesystem without flock(2): NFS without locking, some FUSE mounts
        if operation & fcntl.LOCK_EX:
            raise OSError(errno.ENOSYS, "Function not implemented")
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", no_flock)
    cell = tmp_path / "cells" / "ce" / "seed0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # filelock says it falls back
        lock = cell_lock(cell)
        lock.acquire(timeout=0)
        with pytest.raises(Timeout):
            cell_lock(cell).acquire(timeout=0)  # a second holder is still kept out
        lock.release()
        cell_lock(cell).acquire(timeout=0)


def test_two_studies_moving_one_damaged_file_aside_do_not_crash(tmp_path, monkeypatch, capsys):
    from trl_shaped.study import cells

    record = tmp_path / "stage1.json"
    record.write_text('{"cut')
    real_replace = os.replace

    def other_study_first(source, target):  # the other study moves it aside between this one's read and move
        real_replace(source, target)
        real_replace(source, target)  # this study's own move finds the file gone

    monkeypatch.setattr(cells.os, "replace", other_study_first)
    assert cells.read_record(record) is None  # recomputed, no crash
    assert (tmp_path / "stage1.json.damaged").read_text() == '{"cut'


def test_a_real_scale_cell_run_by_its_dry_run_command_is_accepted(tmp_path, monkeypatch, capsys):
    import shlex

    from trl_shaped.study.runner import run_study

    out = tmp_path / "study"
    config = real_scale(presets="ce", num_seeds=1, output_dir=str(out), dry_run=True)
    run_study(config)
    (command,) = [line for line in capsys.readouterr().out.splitlines() if "trl_shaped.study.cell_runner" in line]
    words = shlex.split(command)
    argv = words[words.index("trl_shaped.study.cell_runner") + 1 :]
    stages = []

    def fake_run(argv, log, env, hand_over=None):  # each stage as it would end: an evaluation writes its eval.json
        stages.append(argv[3])
        if argv[3] == "eval":
            folder = Path(argv[argv.index("--output_dir") + 1])
            folder.mkdir(parents=True)
            (folder / "eval.json").write_text(json.dumps({"avg_at_n": 0.5, "pass_at_k": {"1": 0.5}}))

    monkeypatch.setattr(cell_runner, "_run", fake_run)
    cell_runner.main(argv)  # what the printed command runs
    assert stages == ["sft", "eval", "grpo", "eval"]
    config.dry_run = False
    assert runner.prepare_cells(config, out) == ([("ce", 0)], [])  # taken as done


def test_every_study_field_says_which_cells_read_it():
    import dataclasses

    from trl_shaped.study import config as study_config

    named = (
        study_config.STUDY_LEVEL_FIELDS
        + study_config.REAL_SCALE_FIELDS
        + study_config.BUILTIN_FIELDS
        + study_config.BY_CONTENTS_FIELDS
        + study_config.CELL_OWN_FIELDS
    )
    assert sorted(named) == sorted(f.name for f in dataclasses.fields(StudyConfig))  # each once, none forgotten
