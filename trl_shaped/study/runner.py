"""`run_study`: every cell (preset, seed) of a study in its own process, cached on disk, then the statistics, the
claims' verdicts, the figures and the report.

Layout of `config.output_dir`:

    study_config.json                     the StudyConfig the cells read (built-in task)
    cells/<preset>/seed<k>/result.json    a finished cell: written atomically, LAST; its presence means "done"
    cells/<preset>/seed<k>/log.txt        the cell's output (every attempt, appended)
    cells/<preset>/seed<k>/stage1/, rl/   checkpoints (checkpoint-<step>/ while training, the model at the end);
                                          at real scale `log_history.json`, written by the stage when it ends
    jobs/                                 the cells' job scripts and logs (launcher slurm / submitit_local)
    results.json, figures.json, report.md, *.png

Caching and resume. A cell whose `result.json` exists is skipped. Inside a cell each stage (stage 1, evaluation, GRPO,
evaluation) writes its own record atomically when it finishes and is skipped when that record exists; an interrupted
training stage restarts from its newest checkpoint that has a `trainer_state.json` (Trainer's
`resume_from_checkpoint`). So a study killed at any point loses at most the steps since the last checkpoint.

Two backends (`StudyConfig.builtin`). The built-in task runs one process per cell (`python -m trl_shaped.study.builtin_cell`,
`num_threads` torch threads), `max_parallel` at once. At real scale each stage of a cell is a command through the
recipes (`python -m trl_shaped sft|grpo|eval --config <recipe> --seed ... --output_dir ...`), under
`accelerate launch --config_file <accelerate_config>` when one is given; `stage_commands` builds them.

Where the cells run (`StudyConfig.launcher`, launchers.py): a local pool, or each cell one job (Slurm through submitit).
Either way a cell is `run_cell`. `report_only` writes the report from the finished cells, naming the missing ones;
`dry_run` prints every cell's commands; neither runs a cell.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..scripts import LOG_HISTORY
from .cells import RESULT, cell_dir, newest_checkpoint, say, write_json_atomic
from .claims import judge_claims, metric_values, summarize
from .config import StudyConfig

BUILTIN_CELL_MODULE = (
    "trl_shaped.study.builtin_cell"  # the built-in cell's worker, run as `python -m` (a process per cell)
)


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


def tracking_args(config: StudyConfig, preset: str, seed: int, stage: str) -> list[str]:
    """Real scale: the run name `<study>/<preset>/seed<k>/<stage>` and the trackio project of a training stage, and
    the study's `report_to` when it names trackers (else the recipe's own setting stays)."""
    argv = ["--run_name", config.run_name(preset, seed, stage), "--project", config.study_name]
    if config.report_to is not None:
        argv += ["--report_to", (config.report_to or ["none"])[0]]
    return argv


def stage_commands(config: StudyConfig, preset: str, seed: int, cell: Path) -> list[tuple[str, list[str]]]:
    """Real scale: the (stage, argv) of a cell's four stages, in order. Recipe values come first, then the study's
    overrides (the recipe's model, seed and output directory are replaced), then `*_args`. The resume flag of a
    training stage is added by `run_stage` when it finds a checkpoint."""
    cell = Path(cell)

    def dataset(name):
        return ["--dataset_name", name] if name else []

    stage1 = [
        "sft", "--config", config.stage1_recipe.format(preset=preset), "--shaping_preset", preset,
        "--model_name_or_path", config.model_name_or_path, "--seed", str(seed), "--output_dir", str(cell / "stage1"),
        *dataset(config.stage1_dataset), *tracking_args(config, preset, seed, "stage1"),
        *shlex.split(config.stage1_args),
    ]  # fmt: skip
    rl = [
        "grpo", "--config", config.rl_recipe, "--model_name_or_path", str(cell / "stage1"), "--seed", str(seed),
        "--output_dir", str(cell / "rl"), *dataset(config.rl_dataset), *tracking_args(config, preset, seed, "rl"),
        *shlex.split(config.rl_args),
    ]  # fmt: skip

    def evaluation(model, name):
        return [
            "eval", "--config", config.eval_recipe, "--model_name_or_path", model, "--seed", str(seed),
            "--output_dir", str(cell / name), "--run_name", "eval", *dataset(config.eval_dataset),
            *shlex.split(config.eval_args),
        ]  # fmt: skip

    return [
        ("stage1", stage1),
        ("eval_stage1", evaluation(str(cell / "stage1"), "eval_stage1")),
        ("rl", rl),
        ("eval_rl", evaluation(str(cell / "rl"), "eval_rl")),
    ]


def _run(argv: list[str], log: Path, env: dict) -> None:
    with open(log, "a") as stream:
        stream.write(f"\n$ {shlex.join(argv)}\n")
        stream.flush()
        done = subprocess.run(argv, stdout=stream, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"exit status {done.returncode} of `{shlex.join(argv[:6])} ...`; see {log}")


def stage_log_history(folder: Path) -> list[dict]:
    """The log history a training stage wrote when it ended (`log_history.json`, scripts/sft.py and grpo.py); for a
    stage run by an older version, the last checkpoint's `trainer_state.json`; else empty."""
    written = Path(folder) / LOG_HISTORY
    if written.is_file():
        return json.loads(written.read_text())
    last = newest_checkpoint(folder)
    return json.loads((Path(last) / "trainer_state.json").read_text()).get("log_history", []) if last else []


def run_stage(config: StudyConfig, stage: str, argv: list[str], cell: Path) -> dict:
    """Real scale: run one stage unless its record exists; returns the record (`<stage>.json` in the cell)."""
    record_path = cell / f"{stage}.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    training = stage in ("stage1", "rl")
    resumed = newest_checkpoint(cell / stage) if training else None
    if resumed:
        argv = argv + ["--resume_from_checkpoint", resumed]
    start = time.perf_counter()
    _run(launcher(config) + argv, cell / "log.txt", cell_env(config))
    record = {"seconds": time.perf_counter() - start, "resumed_from": resumed, "command": argv}
    if training:
        record["log_history"] = stage_log_history(cell / stage)
    else:
        result = json.loads((cell / stage / "eval.json").read_text())
        record.update({k: v for k, v in result.items() if k != "per_problem"})
    write_json_atomic(record_path, record)
    return record


def run_cell(config: StudyConfig, preset: str, seed: int, out: Path) -> dict:
    """Run (or resume) one cell and return its result; a finished cell is read back, not rerun."""
    cell = cell_dir(out, preset, seed)
    if (cell / RESULT).is_file():
        return json.loads((cell / RESULT).read_text())
    cell.mkdir(parents=True, exist_ok=True)
    if config.builtin:
        argv = [sys.executable, "-m", BUILTIN_CELL_MODULE, str(Path(out) / "study_config.json"), preset, str(seed)]
        argv.append(str(cell))
        _run(argv, cell / "log.txt", cell_env(config))  # the worker writes result.json
        return json.loads((cell / RESULT).read_text())
    records = {
        stage: run_stage(config, stage, argv, cell) for stage, argv in stage_commands(config, preset, seed, cell)
    }
    result = {"preset": preset, "seed": seed, **records}
    write_json_atomic(cell / RESULT, result)
    return result


def run_cells(config: StudyConfig, out: Path) -> list[dict]:
    """Every cell of the study through `config.launcher` (launchers.py); raises after all have run if any failed."""
    from .launchers import run_jobs, run_local

    cells = [(p, s) for s in config.seeds() for p in config.preset_names()]
    todo = [c for c in cells if not (cell_dir(out, *c) / RESULT).is_file()]
    shape = f"{len(config.preset_names())} presets x {config.num_seeds} seeds"
    how = (
        f"{config.parallel(max(1, len(todo)))} at a time"
        if config.launcher == "local"
        else f"each a {config.launcher} job"
    )
    say("study", f"{len(cells)} cells ({shape}), {len(cells) - len(todo)} already done; running {len(todo)}, {how}")
    failures = (run_local if config.launcher == "local" else run_jobs)(config, out, todo) if todo else []
    if failures:
        raise RuntimeError(f"{len(failures)} cell(s) failed (rerun to resume them):\n" + "\n".join(failures))
    return [json.loads((cell_dir(out, *c) / RESULT).read_text()) for c in cells]


def finished_cells(config: StudyConfig, out: Path) -> tuple[list[dict], list[dict]]:
    """`--report_only`: the results of the cells finished so far, and what is missing of the others (per cell: the
    stages already recorded)."""
    done, missing = [], []
    for seed in config.seeds():
        for preset in config.preset_names():
            cell = cell_dir(out, preset, seed)
            if (cell / RESULT).is_file():
                done.append(json.loads((cell / RESULT).read_text()))
                continue
            stages = [s for s in ("stage1", "eval_stage1", "rl", "eval_rl") if (cell / f"{s}.json").is_file()]
            missing.append({"preset": preset, "seed": seed, "stages_done": stages, "started": cell.is_dir()})
    return done, missing


def print_commands(config: StudyConfig, out: Path) -> None:
    """`--dry_run`: every cell's commands, as the runner would start them (with the variables it sets: threads of a
    built-in cell, the tracker group), for another scheduler to run; nothing else happens. The built-in cells read
    `study_config.json`, which is written."""
    env = cell_env(config)
    names = ["WANDB_RUN_GROUP"] + (
        ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"] if config.builtin else []
    )
    prefix = " ".join(f"{k}={shlex.quote(env[k])}" for k in names)
    print(f"# {config.study_name}: run from {os.getcwd()}; a cell is done when its result.json exists", flush=True)
    if not config.builtin:
        print("# the runner adds --resume_from_checkpoint <newest checkpoint> to an interrupted training stage and "
              "writes <cell>/<stage>.json when a stage ends", flush=True)  # fmt: skip
    for seed in config.seeds():
        for preset in config.preset_names():
            cell = cell_dir(out, preset, seed)
            done = " (done)" if (cell / RESULT).is_file() else ""
            print(f"\n# cell {preset} seed {seed}: {cell}{done}", flush=True)
            if config.builtin:
                argv = [sys.executable, "-m", BUILTIN_CELL_MODULE, str(out / "study_config.json"), preset, str(seed)]
                commands = [argv + [str(cell)]]
            else:
                commands = [launcher(config) + argv for _, argv in stage_commands(config, preset, seed, cell)]
            for argv in commands:
                print(" ".join(filter(None, [prefix, shlex.join(argv)])), flush=True)


def build_results(
    config: StudyConfig, cells: list[dict], seconds: float, env: dict, missing: list[dict] | None = None
) -> dict:
    """The study's `results.json` from its cells: the verdicts, each metric's interval per preset and paired to ce,
    every per-seed value, and the cells left out (`missing`: `--report_only` before all have finished). A pure
    function of its arguments."""
    values = metric_values(cells)
    summary = summarize(values, config.confidence)
    return {
        "config": asdict(config),
        "seconds": seconds,
        "environment": env,
        "claims": judge_claims(values, config.confidence, config.equal_nll_tolerance),
        "presets": {
            p: {m: summary["mean"][m][p].to_dict() for m in summary["mean"] if p in summary["mean"][m]}
            for p in config.preset_names()
        },
        "vs_ce": {m: {p: v.to_dict() for p, v in by.items()} for m, by in summary["vs_ce"].items()},
        "values": {m: {p: {str(s): v for s, v in by.items()} for p, by in byp.items()} for m, byp in values.items()},
        "cells": [
            {k: c[k] for k in ("preset", "seed")}
            | {"seconds": {s: c[s].get("seconds") for s in ("stage1", "rl")}, "cpu_seconds": c.get("cpu_seconds")}
            for c in cells
        ],
        "missing_cells": missing or [],
    }


def run_study(config: StudyConfig | None = None) -> Path:
    """Run (or resume) every cell of the study, then write the statistics, the verdicts, the figures and the report.
    With `config.report_only` the report covers the finished cells and runs none; with `config.dry_run` every cell's
    commands are printed and nothing else is done.

    Args:
        config (`StudyConfig`, *optional*): the study; the default (built-in task, full profile) when `None`.

    Returns:
        the study directory (`config.output_dir`).
    """
    from .figures import write_figures
    from .report import environment, write_report

    config = config or StudyConfig()
    out = Path(config.output_dir)
    load_before, start = os.getloadavg(), time.perf_counter()
    missing = []
    if config.report_only:
        cells, missing = finished_cells(config, out)  # StudyConfig checked that one has finished
        say("study", f"report from {len(cells)} finished cells; {len(missing)} missing (not run by report_only)")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "study_config.json", asdict(config))
        if config.dry_run:
            print_commands(config, out)
            return out
        cells = run_cells(config, out)
    figures = write_figures(out, cells, config.confidence)
    results = build_results(config, cells, time.perf_counter() - start, environment(config, load_before), missing)
    write_json_atomic(out / "results.json", results)
    write_report(out, results, figures)
    say("study", f"done in {results['seconds']:.0f}s; report: {out / 'report.md'}")
    return out
