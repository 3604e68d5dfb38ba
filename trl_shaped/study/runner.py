"""`run_study`: every cell (preset, seed) of a study in its own process, cached on disk, then the statistics, the
claims' verdicts, the figures and the report.

Layout of `config.output_dir` (the cell's files: `trl_shaped/study/cells.py`):

    study_config.json                     the StudyConfig of the last run (a record; each cell keeps its own copy)
    cells/<preset>/seed<k>/fingerprint.json   what the cell was computed with, written before it computes
    cells/<preset>/seed<k>/result.json    a finished cell: written atomically, LAST; its presence means "done"
    cells/<preset>/seed<k>/log.txt        the cell's output (every attempt, appended)
    cells/<preset>/seed<k>/stage1/, rl/   checkpoints (checkpoint-<step>/ while training, the model at the end);
                                          at real scale `log_history.json`, written by the stage when it ends
    cells/<preset>/seed<k>.lock           the lock of the process running the cell
    jobs/                                 the cells' job scripts and logs (launcher slurm / submitit_local)
    results.json, figures.json, report.md, *.png

Caching and resume. A cell whose `result.json` exists is skipped. Inside a cell each stage (stage 1, evaluation, GRPO,
evaluation) writes its own record atomically when it finishes and is skipped when that record exists; an interrupted
training stage restarts from its newest complete checkpoint (`trl_shaped.checkpoints.last_complete_checkpoint`). So a
study killed at any point loses at most the steps since the last checkpoint. A damaged record or `result.json` (not
valid JSON) is moved aside to `<name>.damaged` and recomputed, `result.json` from the stage records.

Settings. A rerun whose settings differ from those a cell (or the built-in task's tokenizer) was computed with stops
before any compute with one line naming them (old -> new); `--overwrite true` recomputes exactly the cells that
differ, another `--output_dir` starts afresh. Results never mix cells of different settings.

Several processes. `run_cell` holds the cell's lock while it runs it: a second process running the same study (a
requeued cluster job, a duplicated command) says so, waits, and reads the finished result instead of training again.

Two backends (`StudyConfig.builtin`). The built-in task runs one process per cell (`python -m trl_shaped.study.builtin_cell`,
`num_threads` torch threads), `max_parallel` at once. At real scale each stage of a cell is a command through the
recipes (`python -m trl_shaped sft|grpo|eval --config <recipe> --seed ... --output_dir ...`), under
`accelerate launch --config_file <accelerate_config>` when one is given; `stage_commands` builds them.

Where the cells run (`StudyConfig.launcher`, launchers.py): a local pool, or each cell one job (Slurm through submitit).
Either way a cell is `run_cell`. `report_only` writes the report from the finished cells, naming the missing ones;
`dry_run` prints every cell's commands; neither runs a cell.
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..checkpoints import last_complete_checkpoint
from ..scripts import LOG_HISTORY
from .cells import (
    FINGERPRINT,
    RESULT,
    StaleCells,
    StudyError,
    acquire_cell,
    cell_dir,
    cell_fingerprint,
    cell_lock,
    clear_folder,
    read_json,
    read_record,
    recorded_fingerprint,
    say,
    stale_changes,
    tokenizer_fingerprint,
    write_json_atomic,
)
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

    def evaluation(model, name):
        return [
            "eval", "--config", config.eval_recipe, "--model_name_or_path", model, "--seed", str(seed),
            "--output_dir", str(cell / name), "--run_name", "eval", *dataset(config.eval_dataset),
            *tracking_args(config, preset, seed, name, "--tracker_run_name"), *shlex.split(config.eval_args),
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
        return read_json(written) or []
    last = last_complete_checkpoint(folder)
    state = read_json(Path(last) / "trainer_state.json") if last else None
    return (state or {}).get("log_history", [])


def run_stage(config: StudyConfig, stage: str, argv: list[str], cell: Path) -> dict:
    """Real scale: run one stage unless its record exists; returns the record (`<stage>.json` in the cell). A training
    stage resumes from its newest complete checkpoint (`trl_shaped.checkpoints.last_complete_checkpoint`, the rule
    the trainers apply to `--resume_from_checkpoint true`)."""
    record_path = cell / f"{stage}.json"
    record = read_record(record_path)
    if record is not None:
        return record
    training = stage in ("stage1", "rl")
    resumed = last_complete_checkpoint(cell / stage) if training else None
    if resumed:
        argv = argv + ["--resume_from_checkpoint", resumed]
    start = time.perf_counter()
    _run(launcher(config) + argv, cell / "log.txt", cell_env(config))
    record = {"seconds": time.perf_counter() - start, "resumed_from": resumed, "command": argv}
    if training:
        record["log_history"] = stage_log_history(cell / stage)
    else:
        result = read_json(cell / stage / "eval.json")
        if result is None:
            raise RuntimeError(
                f"the evaluation ended without writing {cell / stage / 'eval.json'}; see {cell / 'log.txt'}"
            )
        record.update({k: v for k, v in result.items() if k != "per_problem"})
    write_json_atomic(record_path, record)
    return record


def _refusal(out: Path, stale: list[tuple[str, list[str]]]) -> str:
    """The one line a rerun with other settings stops with: which cells, which settings (old -> new), the ways on."""
    names = [name for name, _ in stale]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    changes = "; ".join(dict.fromkeys(change for _, found in stale for change in found))
    return (
        f"{out} holds results computed with other settings ({shown}: {changes}). Nothing was run: choose another "
        "--output_dir, or rerun with --overwrite true to recompute exactly what differs."
    )


def stale_cells(config: StudyConfig, out: Path, cells: list[tuple[str, int]]) -> list[tuple[str, list[str]]]:
    """What of `out` was computed with other settings than `config`'s: (name, changes) per differing cell, and the
    built-in task's shared tokenizer. Reads fingerprints only (no compute)."""
    stale = []
    for preset, seed in cells:
        changes = stale_changes(cell_dir(out, preset, seed), cell_fingerprint(config, preset))
        if changes:
            stale.append((f"{preset} seed {seed}", changes))
    if config.builtin:
        changes = stale_changes(Path(out) / "tokenizer", tokenizer_fingerprint(config))
        if changes:
            stale.append(("the tokenizer", changes))
    return stale


def run_cell(config: StudyConfig, preset: str, seed: int, out: Path) -> dict:
    """Run (or resume) one cell and return its result; a finished cell is read back, not rerun.

    The one entry any process calls for a cell (the local pool, a cluster job): safe to call from several processes
    at once. The cell's lock (`cells.cell_lock`) is held throughout; a second caller says so, waits for the first,
    then reads its result (or resumes the cell if the first failed). Under the lock the cell's recorded fingerprint
    is checked: a cell computed with other settings raises `StaleCells`, or with `config.overwrite` is cleared and
    recomputed. A damaged `result.json` or stage record is moved aside and recomputed (`cells.read_record`).

    Args:
        config (`StudyConfig`): the study.
        preset (`str`), seed (`int`): the cell.
        out (`Path`): the study directory.
    """
    cell = cell_dir(out, preset, seed)
    name = f"{preset} seed {seed}"
    lock = cell_lock(cell)
    acquire_cell(lock, name)
    try:
        cell.mkdir(parents=True, exist_ok=True)
        fingerprint = cell_fingerprint(config, preset)
        changes = stale_changes(cell, fingerprint)
        if changes and not config.overwrite:
            raise StaleCells(_refusal(Path(out), [(name, changes)]))
        if changes:
            say("study", f"{name}: computed with other settings ({'; '.join(changes)}); recomputing it (overwrite)")
            clear_folder(cell)
        if recorded_fingerprint(cell) is None:
            write_json_atomic(cell / FINGERPRINT, fingerprint)
        result = read_record(cell / RESULT, "study")
        if result is not None:
            return result
        if config.builtin:
            # this process's settings, not the study directory's shared copy (another process may have rewritten it)
            write_json_atomic(cell / "study_config.json", asdict(config))
            argv = [sys.executable, "-m", BUILTIN_CELL_MODULE, str(cell / "study_config.json"), preset, str(seed)]
            argv.append(str(cell))
            _run(argv, cell / "log.txt", cell_env(config))  # the worker writes result.json
            result = read_json(cell / RESULT)
            if result is None:
                raise RuntimeError(f"the cell ended without writing {cell / RESULT}; see {cell / 'log.txt'}")
            return result
        records = {
            stage: run_stage(config, stage, argv, cell) for stage, argv in stage_commands(config, preset, seed, cell)
        }
        result = {"preset": preset, "seed": seed, **records}
        write_json_atomic(cell / RESULT, result)
        return result
    finally:
        lock.release()


def prepare_cells(config: StudyConfig, out: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Before any compute: the study's cells and those to run. Every existing cell's fingerprint (and the built-in
    tokenizer's) is compared with this run's: when one differs this raises `StaleCells` (one line naming the
    settings) unless `config.overwrite`, which marks exactly those for recomputing (and removes a stale tokenizer).
    A damaged `result.json` is moved aside (its cell is run again: the stages it recorded are read back).

    Returns:
        `(cells, todo)`: every (preset, seed) of the study, and those without a valid result of these settings.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = config.cells()
    stale = stale_cells(config, out, cells)
    if stale and not config.overwrite:
        raise StaleCells(_refusal(out, stale))
    if any(name == "the tokenizer" for name, _ in stale):
        say("study", "the shared tokenizer was built with other settings; rebuilding it (overwrite)")
        shutil.rmtree(out / "tokenizer")
    write_json_atomic(out / "study_config.json", asdict(config))  # a record: each cell runs with its own copy
    stale_names = {name for name, _ in stale}
    todo = [
        c
        for c in cells
        if f"{c[0]} seed {c[1]}" in stale_names or read_record(cell_dir(out, *c) / RESULT, "study") is None
    ]
    return cells, todo


def collect_results(config: StudyConfig, out: Path, cells: list[tuple[str, int]]) -> list[dict]:
    """The results of `cells`, all finished; raises `StaleCells` if one was meanwhile recomputed with other settings
    (by another process with `overwrite`): results never mix cells of different settings."""
    stale = stale_cells(config, out, cells)
    if stale:
        raise StaleCells(_refusal(Path(out), stale))
    return [read_json(cell_dir(out, *c) / RESULT) for c in cells]


def run_cells(config: StudyConfig, out: Path) -> list[dict]:
    """Every cell of the study through `config.launcher` (launchers.py); raises after all have run if any failed.

    Before any compute the cells' fingerprints are checked (`prepare_cells`): a study whose directory holds cells of
    other settings stops (`StaleCells`) unless `config.overwrite`, which recomputes those cells only.
    """
    from .launchers import run_jobs, run_local

    out = Path(out)
    cells, todo = prepare_cells(config, out)
    shape = f"{len(config.preset_names())} presets x {config.num_seeds} seeds"
    how = (
        f"{config.parallel(max(1, len(todo)))} at a time"
        if config.launcher == "local"
        else f"each a {config.launcher} job"
    )
    say("study", f"{len(cells)} cells ({shape}), {len(cells) - len(todo)} already done; running {len(todo)}, {how}")
    failures = (run_local if config.launcher == "local" else run_jobs)(config, out, todo) if todo else []
    if failures:
        raise StudyError(f"{len(failures)} cell(s) failed (rerun to resume them):\n" + "\n".join(failures))
    return collect_results(config, out, cells)


def finished_cells(config: StudyConfig, out: Path) -> tuple[list[dict], list[dict]]:
    """`--report_only`: the results of the cells finished so far, and what is missing of the others (per cell: the
    stages already recorded)."""
    done, missing = [], []
    cells = config.cells()
    stale = {name for name, _ in stale_cells(config, out, cells)}  # other settings: never mixed into the report
    for preset, seed in cells:
        cell = cell_dir(out, preset, seed)
        result = None if f"{preset} seed {seed}" in stale else read_json(cell / RESULT)
        if result is not None:
            done.append(result)
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
    for preset, seed in config.cells():
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

    Raises:
        StaleCells: before any compute, when `output_dir` holds cells computed with other settings and
            `config.overwrite` is False.
        StudyError: after every cell has run, when some failed (rerunning resumes them).
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
    elif config.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "study_config.json", asdict(config))  # the printed built-in commands read it
        print_commands(config, out)
        return out
    else:
        cells = run_cells(config, out)
    figures = write_figures(out, cells, config.confidence)
    results = build_results(config, cells, time.perf_counter() - start, environment(config, load_before), missing)
    write_json_atomic(out / "results.json", results)
    write_report(out, results, figures)
    say("study", f"done in {results['seconds']:.0f}s; report: {out / 'report.md'}")
    return out
