"""`run_study`: every cell (preset, seed) of a study in its own process, cached on disk, then the statistics, the
claims' verdicts, the figures and the report.

Layout of `config.output_dir`:

    study_config.json                     the StudyConfig the cells read (built-in task)
    cells/<preset>/seed<k>/result.json    a finished cell: written atomically, LAST; its presence means "done"
    cells/<preset>/seed<k>/log.txt        the cell's output (every attempt, appended)
    cells/<preset>/seed<k>/stage1/, rl/   checkpoints (checkpoint-<step>/ while training, the model at the end)
    results.json, figures.json, report.md, *.png

Caching and resume. A cell whose `result.json` exists is skipped. Inside a cell each stage (stage 1, evaluation, GRPO,
evaluation) writes its own record atomically when it finishes and is skipped when that record exists; an interrupted
training stage restarts from its newest checkpoint that has a `trainer_state.json` (Trainer's
`resume_from_checkpoint`). So a study killed at any point loses at most the steps since the last checkpoint.

Two backends (`StudyConfig.builtin`). The built-in task runs one process per cell (`python -m trl_shaped.study.builtin_cell`,
`num_threads` torch threads), `max_parallel` at once. At real scale each stage of a cell is a command through the
recipes (`python -m trl_shaped sft|grpo|eval --config <recipe> --seed ... --output_dir ...`), under
`accelerate launch --config_file <accelerate_config>` when one is given; `stage_commands` builds them.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from .cells import RESULT, cell_dir, newest_checkpoint, say, write_json_atomic
from .claims import judge_claims, metric_values, summarize
from .config import StudyConfig, stage1_arguments

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
    return env


def launcher(config: StudyConfig) -> list[str]:
    """`python -m trl_shaped`, under `accelerate launch` when the study names an accelerate config."""
    if config.accelerate_config is None:
        return [sys.executable, "-m", "trl_shaped"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config.accelerate_config] + [
        "-m",
        "trl_shaped",
    ]


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
        *dataset(config.stage1_dataset), *shlex.split(config.stage1_args),
    ]  # fmt: skip
    rl = [
        "grpo", "--config", config.rl_recipe, "--model_name_or_path", str(cell / "stage1"), "--seed", str(seed),
        "--output_dir", str(cell / "rl"), *dataset(config.rl_dataset), *shlex.split(config.rl_args),
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
        # the trainer saves a last checkpoint at the end of a step-saving run: its state has the whole log history
        last = newest_checkpoint(cell / stage)
        state = json.loads((Path(last) / "trainer_state.json").read_text()) if last else {}
        record["log_history"] = state.get("log_history", [])
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
    """Every cell of the study, `config.parallel` at a time; raises after all have run if any failed."""
    cells = [(p, s) for s in config.seeds() for p in config.preset_names()]
    todo = [c for c in cells if not (cell_dir(out, *c) / RESULT).is_file()]
    workers = config.parallel(max(1, len(todo)))
    shape = f"{len(config.preset_names())} presets x {config.num_seeds} seeds"
    say(
        "study",
        f"{len(cells)} cells ({shape}), {len(cells) - len(todo)} already done; running {len(todo)}, {workers} at a time",
    )
    start, finished, failures = time.perf_counter(), [0], []

    def one(cell):
        try:
            run_cell(config, *cell, out)
        except Exception as error:  # noqa: BLE001 - reported with the others below
            failures.append(f"{cell[0]} seed {cell[1]}: {error}")
            say("study", f"FAILED {cell[0]} seed {cell[1]}: {error}")
            return
        finished[0] += 1
        say("study", f"({finished[0]}/{len(todo)}) {cell[0]} seed {cell[1]} done ({time.perf_counter() - start:.0f}s)")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, todo))
    if failures:
        raise RuntimeError(f"{len(failures)} cell(s) failed (rerun to resume them):\n" + "\n".join(failures))
    return [json.loads((cell_dir(out, *c) / RESULT).read_text()) for c in cells]


def build_results(config: StudyConfig, cells: list[dict], seconds: float, env: dict) -> dict:
    """The study's `results.json` from its cells: the verdicts, each metric's interval per preset and paired to ce,
    every per-seed value. A pure function of its arguments."""
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
    }


def run_study(config: StudyConfig | None = None) -> Path:
    """Run (or resume) every cell of the study, then write the statistics, the verdicts, the figures and the report.

    Args:
        config (`StudyConfig`, *optional*): the study; the default (built-in task, full profile) when `None`.

    Returns:
        the study directory (`config.output_dir`).
    """
    from .figures import write_figures
    from .report import environment, write_report

    config = config or StudyConfig()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    load_before, start = os.getloadavg(), time.perf_counter()
    write_json_atomic(out / "study_config.json", asdict(config))
    cells = run_cells(config, out)
    figures = write_figures(out, cells, config.confidence)
    results = build_results(config, cells, time.perf_counter() - start, environment(config, load_before))
    write_json_atomic(out / "results.json", results)
    write_report(out, results, figures)
    say("study", f"done in {results['seconds']:.0f}s; report: {out / 'report.md'}")
    return out
