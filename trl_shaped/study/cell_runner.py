"""One cell, run or resumed by the process that owns it: `run_cell`, the one entry of a cell whichever launcher runs
it (the local pool, a cluster job, a command printed by `--dry_run`).

The process that writes a cell holds its lock (`cells.owned_cell`): on the built-in task the cell's worker
(`python -m trl_shaped.study.builtin_cell`, which takes the lock itself), at real scale this process, which runs the
four stage commands and writes their records. Every process started here ends with the process that started it
(`children.py`), so a stopped study leaves no worker behind.

    python -m trl_shaped.study.cell_runner <study_config.json> <preset> <seed> <study_dir>

runs one cell of either scale by hand, as the runner would (exit status 2 with one line when the cell was computed
with other settings).
"""

import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..checkpoints import last_complete_checkpoint
from ..scripts import LOG_HISTORY
from .cells import (
    RESULT,
    StaleCells,
    cell_dir,
    owned_cell,
    read_json,
    read_record,
    say,
    write_json_atomic,
)
from .children import end_children_on_signals, start_child, wait_child
from .commands import BUILTIN_CELL_MODULE, builtin_cell_command, cell_env, launcher, stage_commands
from .config import StudyConfig

STALE_EXIT_STATUS = 2  # a cell worker refusing a cell of other settings (its log's last line says which)


class StaleWorker(StaleCells):
    """A cell's worker refused it: computed with other settings (the message is the worker's line)."""


def _run(argv: list[str], log: Path, env: dict, hand_over=None) -> None:
    """Run `argv` to its end as a child that dies with this process, its output appended to `log`. `hand_over`: the
    cell's lock, held until the child (a cell worker) is about to take it itself, then let go."""
    with open(log, "a") as stream:
        stream.write(f"\n$ {shlex.join(argv)}\n")
        stream.flush()
        process = start_child(argv, ready=hand_over is not None, stdout=stream, stderr=stream, env=env)
        if hand_over is not None:
            hand_over.release()
        status = wait_child(process)
    if status == STALE_EXIT_STATUS and BUILTIN_CELL_MODULE in argv:
        lines = [line for line in Path(log).read_text().splitlines() if line.strip()]
        raise StaleWorker(lines[-1].split("error: ", 1)[-1] if lines else f"the cell was refused; see {log}")
    if status != 0:
        raise RuntimeError(f"exit status {status} of `{shlex.join(argv[:6])} ...`; see {log}")


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


def run_cell(config: StudyConfig, preset: str, seed: int, out: Path) -> dict:
    """Run (or resume) one cell and return its result; a finished cell is read back, not rerun.

    Safe to call from several processes at once: the cell's owner (`cells.owned_cell`) holds its lock, a second caller
    says so, waits, then reads the result (or resumes the cell if the first failed). A cell computed with other
    settings raises `StaleCells`, or with `config.overwrite` is cleared and recomputed. A damaged `result.json` or
    stage record is moved aside and recomputed (`cells.read_record`).

    Args:
        config (`StudyConfig`): the study.
        preset (`str`), seed (`int`): the cell.
        out (`Path`): the study directory.
    """
    cell = cell_dir(out, preset, seed)
    if config.builtin:
        with owned_cell(config, preset, seed, cell) as owned:  # checked (and cleared) before the worker starts
            if owned.result is not None:
                return owned.result
            # this process's settings, not the study directory's shared copy (another process may rewrite it)
            write_json_atomic(cell / "study_config.json", asdict(config))
            # the worker writes the cell and holds its lock: this process holds it until the worker takes it over
            argv = builtin_cell_command(cell / "study_config.json", preset, seed, cell)
            _run(argv, cell / "log.txt", cell_env(config), hand_over=owned.lock)
        result = read_json(cell / RESULT)
        if result is None:
            raise RuntimeError(f"the cell ended without writing {cell / RESULT}; see {cell / 'log.txt'}")
        return result
    with owned_cell(config, preset, seed, cell) as owned:
        if owned.result is not None:
            return owned.result
        records = {
            stage: run_stage(config, stage, argv, cell) for stage, argv in stage_commands(config, preset, seed, cell)
        }
        result = {"preset": preset, "seed": seed, **records}
        write_json_atomic(cell / RESULT, result)
        return result


def main(argv: list[str] | None = None) -> None:
    """`<study_config.json> <preset> <seed> <study_dir>`: run one cell (see the module docstring)."""
    config_path, preset, seed, out = argv if argv is not None else sys.argv[1:]
    config = StudyConfig(**json.loads(Path(config_path).read_text()))
    end_children_on_signals()
    try:
        run_cell(config, preset, int(seed), Path(out))
    except StaleCells as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(STALE_EXIT_STATUS) from None
    say("cell", f"{preset} seed {seed} done: {cell_dir(out, preset, int(seed)) / RESULT}")


if __name__ == "__main__":
    main()
