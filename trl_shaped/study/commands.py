"""What a cell runs, as command lines: a pure function of the study's settings, shared by the runner, the cell's
fingerprint (`cells.py`: the recipes and the accelerate file these commands read, the world size they train at) and
`--dry_run`.

- the built-in task: one worker process per cell, `python -m trl_shaped.study.builtin_cell <study_config.json> <preset>
  <seed> <cell_dir>` (`builtin_cell_command`);
- real scale: four stage commands through the recipes (`stage_commands`), each under `launcher(config)`: `python -m
  trl_shaped`, or `accelerate launch` with the study's accelerate file and, on Slurm, the job's GPUs as processes. An
  evaluation recipe that is a suite (`recipes/eval_suite.yaml`) runs as `trl-shaped eval --suite`: the cell's
  evaluation is the suite's table, whose macro average the claims compare.
"""

import os
import shlex
import sys
from pathlib import Path

import yaml

from .config import StudyConfig, stage1_arguments

BUILTIN_CELL_MODULE = "trl_shaped.study.builtin_cell"  # the built-in cell's worker, run as `python -m`
CELL_RUNNER_MODULE = "trl_shaped.study.cell_runner"  # one cell of either scale, run as `python -m` (dry run)


def builtin_cell_command(config_path: Path, preset: str, seed: int, cell: Path) -> list[str]:
    """The built-in cell's worker: it takes the cell's lock, records the cell's fingerprint and writes the cell."""
    return [sys.executable, "-m", BUILTIN_CELL_MODULE, str(config_path), preset, str(seed), str(cell)]


def cell_command(config_path: Path, preset: str, seed: int, out: Path) -> list[str]:
    """One cell of either scale run by hand (`cell_runner.main`): every stage, with the runner's resume and records."""
    return [sys.executable, "-m", CELL_RUNNER_MODULE, str(config_path), preset, str(seed), str(out)]


def world_size(config: StudyConfig) -> int:
    """The number of processes a cell trains with: 1 on the built-in task and without an accelerate file; on Slurm the
    job's GPUs (`--num_processes slurm_gpus_per_cell`); else the accelerate file's `num_processes` (accelerate's
    default, 1, when the file names none). It sets the global batch, so it is part of the cell's fingerprint."""
    if config.builtin:
        return 1
    if config.launcher == "slurm":
        return config.slurm_gpus_per_cell
    if config.accelerate_config is None:
        return 1
    try:
        settings = yaml.safe_load(Path(config.accelerate_config).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return 1  # the file's contents are fingerprinted too: a damaged or missing file still shows as a change
    return int(settings.get("num_processes", 1)) if isinstance(settings, dict) else 1


def cell_env(config: StudyConfig) -> dict:
    """Environment of a cell process: this package first on the path; on the built-in task `num_threads` threads
    (the cells run side by side, so one BLAS thread each is what the cores allow)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if config.builtin:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(config.num_threads)
    env.setdefault("WANDB_RUN_GROUP", config.study_name)  # the seeds of a preset line up in one group
    return env


def launcher(config: StudyConfig) -> list[str]:
    """`python -m trl_shaped`, under `accelerate launch` when the study names an accelerate config. A Slurm cell job
    launches `slurm_gpus_per_cell` processes (the job's GPUs), under accelerate's defaults when no config is named."""
    slurm = config.launcher == "slurm"
    if config.accelerate_config is None and not slurm:
        return [sys.executable, "-m", "trl_shaped"]
    argv = [sys.executable, "-m", "accelerate.commands.launch"]
    if config.accelerate_config is not None:
        argv += ["--config_file", config.accelerate_config]
    if slurm:
        argv += ["--num_processes", str(config.slurm_gpus_per_cell), "--num_machines", "1"]
        if config.accelerate_config is None and config.slurm_gpus_per_cell > 1:
            argv.append("--multi_gpu")
    return argv + ["-m", "trl_shaped"]


def tracking_args(config: StudyConfig, preset: str, seed: int, stage: str, name_flag: str = "--run_name") -> list[str]:
    """Real scale: the run name `<study>/<preset>/seed<k>/<stage>` (an evaluation's `name_flag`: --tracker_run_name)
    and the trackio project of a stage, and the study's `report_to` when it names trackers (else the recipe's)."""
    argv = [name_flag, config.run_name(preset, seed, stage), "--project", config.study_name]
    if config.report_to is not None:
        argv += ["--report_to", (config.report_to or ["none"])[0]]
    return argv


def is_suite(recipe: str | None) -> bool:
    """Whether the evaluation recipe `recipe` is a suite (`trl_shaped.evaluation.suite`: a `benchmarks` list), which
    `trl-shaped eval --suite` runs; an unreadable file is not (the command reports it)."""
    try:
        content = yaml.safe_load(Path(recipe).read_text(encoding="utf-8")) if recipe else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(content, dict) and "benchmarks" in content


def stage_commands(config: StudyConfig, preset: str, seed: int, cell: Path) -> list[tuple[str, list[str]]]:
    """Real scale: the (stage, argv) of a cell's four stages, in order. Recipe values come first, then the study's
    overrides (the arm's `stage1_arguments`; the recipe's model, seed and output directory are replaced), then
    `*_args`. The resume flag of a training stage is added by `run_stage` when it finds a checkpoint."""
    cell = Path(cell)

    def dataset(name):
        return ["--dataset_name", name] if name else []

    arm = stage1_arguments(preset)  # the recipe is that of the arm's shaping preset (ce for dft)
    stage1 = [
        "sft", "--config", config.stage1_recipe.format(preset=arm["shaping_preset"]),
        *[word for name, value in arm.items() for word in (f"--{name}", str(value))],
        "--model_name_or_path", config.model_name_or_path, "--seed", str(seed), "--output_dir", str(cell / "stage1"),
        *dataset(config.stage1_dataset), *tracking_args(config, preset, seed, "stage1"),
        *shlex.split(config.stage1_args),
    ]  # fmt: skip
    rl = [
        "grpo", "--config", config.rl_recipe, "--model_name_or_path", str(cell / "stage1"), "--seed", str(seed),
        "--output_dir", str(cell / "rl"), *dataset(config.rl_dataset), *tracking_args(config, preset, seed, "rl"),
        *shlex.split(config.rl_args),
    ]  # fmt: skip

    suite = is_suite(config.eval_recipe)
    if suite and config.eval_dataset:
        raise ValueError(
            f"eval_dataset={config.eval_dataset!r} cannot replace the data of the suite {config.eval_recipe!r} (each "
            "benchmark names its own); leave eval_dataset unset or name a single-benchmark eval_recipe"
        )

    def evaluation(model, name):
        # a suite (several benchmarks, one table: its macro average is what the claims compare) or one benchmark
        return [
            "eval", "--suite" if suite else "--config", config.eval_recipe, "--model_name_or_path", model,
            "--seed", str(seed), "--output_dir", str(cell / name), "--run_name", "eval", *dataset(config.eval_dataset),
            *tracking_args(config, preset, seed, name, "--tracker_run_name"), *shlex.split(config.eval_args),
        ]  # fmt: skip

    return [
        ("stage1", stage1),
        ("eval_stage1", evaluation(str(cell / "stage1"), "eval_stage1")),
        ("rl", rl),
        ("eval_rl", evaluation(str(cell / "rl"), "eval_rl")),
    ]
