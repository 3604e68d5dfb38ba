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

Several processes. The process that writes a cell holds its lock (`cells.owned_cell`; the built-in cell's worker, the
real-scale `cell_runner.run_cell`): a second process running the same study (a requeued cluster job, a duplicated
command) says so, waits, and reads the finished result instead of training again. The processes a study starts end
with it (SIGTERM, SIGINT, SIGHUP, or killed: `children.py`), so no two workers ever write one cell.

Two backends (`StudyConfig.builtin`). The built-in task runs one process per cell (`python -m trl_shaped.study.builtin_cell`,
`num_threads` torch threads), `max_parallel` at once. At real scale each stage of a cell is a command through the
recipes (`python -m trl_shaped sft|grpo|eval --config <recipe> --seed ... --output_dir ...`), under
`accelerate launch --config_file <accelerate_config>` when one is given; `stage_commands` builds them.

Where the cells run (`StudyConfig.launcher`, launchers.py): a local pool, or each cell one job (Slurm through submitit).
Either way a cell is `cell_runner.run_cell`. `report_only` writes the report from the finished cells, naming the missing ones;
`dry_run` prints every cell's commands; neither runs a cell.
"""

import os
import shlex
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from .cell_runner import run_cell, run_stage
from .cells import (
    RESULT,
    StaleCells,
    StudyError,
    cell_dir,
    read_json,
    read_record,
    refusal,
    say,
    stale_cells,
    write_json_atomic,
)
from .children import end_children_on_signals
from .claims import decidability, judge_claims, metric_values, paper_k, summarize
from .commands import BUILTIN_CELL_MODULE, builtin_cell_command, cell_command, cell_env, launcher, stage_commands
from .config import StudyConfig
from .launchers import run_jobs, run_local

# the entries of a cell, importable from here as before the split into cell_runner.py and commands.py
__all__ = ["BUILTIN_CELL_MODULE", "launcher", "run_cell", "run_stage", "run_study", "stage_commands"]


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
        raise StaleCells(refusal(out, stale))
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
        raise StaleCells(refusal(Path(out), stale))
    return [read_json(cell_dir(out, *c) / RESULT) for c in cells]


def run_cells(config: StudyConfig, out: Path) -> list[dict]:
    """Every cell of the study through `config.launcher` (launchers.py); raises after all have run if any failed.

    Before any compute the cells' fingerprints are checked (`prepare_cells`): a study whose directory holds cells of
    other settings stops (`StaleCells`) unless `config.overwrite`, which recomputes those cells only.
    """
    out = Path(out)
    end_children_on_signals()  # a stopped study stops its cells' processes (children.py)
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
        print("# each cell's command runs its four stages (shown below it), adds --resume_from_checkpoint <newest "
              "checkpoint> to an interrupted training stage and records each stage and the cell", flush=True)  # fmt: skip
    for preset, seed in config.cells():
        cell = cell_dir(out, preset, seed)
        done = " (done)" if (cell / RESULT).is_file() else ""
        print(f"\n# cell {preset} seed {seed}: {cell}{done}", flush=True)
        if config.builtin:
            argv = builtin_cell_command(out / "study_config.json", preset, seed, cell)
        else:
            argv = cell_command(out / "study_config.json", preset, seed, out)
        print(" ".join(filter(None, [prefix, shlex.join(argv)])), flush=True)
        if not config.builtin:
            for stage, stage_argv in stage_commands(config, preset, seed, cell):
                print(f"#   {stage}: {shlex.join(launcher(config) + stage_argv)}", flush=True)


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
        "decidability": decidability(values, config.confidence),
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
        # the seeds that entered the numbers: every cell's, and the k of the Pass@k compared (k = n/2 of each cell's n)
        "seeds_finished": {p: sorted(c["seed"] for c in cells if c["preset"] == p) for p in config.preset_names()},
        "pass_at_k_compared": sorted({"Pass@{} of {}".format(*paper_k(c["eval_rl"])) for c in cells}),
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
