"""Where a study keeps a cell and how a cell's files are written and read: shared by the runner and the built-in cell.

    <output_dir>/cells/<preset>/seed<k>/                  the cell's files (stage records, checkpoints, log)
    <output_dir>/cells/<preset>/seed<k>/fingerprint.json  what determines the cell (written before it computes)
    <output_dir>/cells/<preset>/seed<k>/result.json       a finished cell: written atomically, last
    <output_dir>/cells/<preset>/seed<k>.lock              held by the process running the cell
    <output_dir>/tokenizer/fingerprint.json               what determines the built-in task's shared tokenizer

Fingerprint. A cell records every `StudyConfig` field that can change it (all but `STUDY_LEVEL_FIELDS`), the
built-in task's generator settings, the package version, and at real scale the sha256 of the recipes and of the
accelerate config it runs with. A rerun compares its own fingerprint with the recorded one before any compute
(`fingerprint_changes`); a cell without a record (written before fingerprints existed) counts as differing.

Lock. `cell_lock` is a `filelock.FileLock`: `flock(2)` on Linux, which the kernel releases when the holding process
ends, however it ends, so a killed process never leaves a lock behind (on a filesystem without `flock`, filelock
falls back to its own soft lock). The lock file sits beside the cell's folder, so a cell can be cleared while locked.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

from filelock import FileLock, Timeout

from .config import STUDY_LEVEL_FIELDS

RESULT = "result.json"
FINGERPRINT = "fingerprint.json"


def say(tag: str, message: str) -> None:
    """One progress line of the study (`tag` "study") or of a cell ("cell"), flushed at once: cells run as child
    processes whose output is interleaved line by line."""
    print(f"[{tag}] {message}", flush=True)


def write_json_atomic(path: Path, obj) -> None:
    """Write `obj` as JSON so that `path` either does not exist or is complete (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")  # unique per writer
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


class StudyError(RuntimeError):
    """A study that cannot go on as asked; the message says why and what to do (the command line prints it alone)."""


class StaleCells(StudyError):
    """The study directory holds cells computed with other settings (see the module docstring)."""


class DamagedFile(RuntimeError):
    """A study file that exists but is not valid JSON; the message names it and what to do."""


def read_json(path: Path):
    """The JSON content of `path`, or None when it does not exist.

    Raises:
        DamagedFile: naming `path` when it is not valid JSON (cut by a full disk or a copy, edited by hand): every
            file of a study is written atomically, so the runner never leaves one half-written.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError as error:
        raise DamagedFile(f"{path} is damaged (not valid JSON: {error})") from None


def read_record(path: Path, tag: str = "cell"):
    """A stage record or a cell's result: its content, or None when it is absent or damaged. A damaged one is moved
    aside to `<name>.damaged` with a line saying so, and the caller recomputes it (a damaged `result.json` is rebuilt
    from the cell's stage records, a damaged stage record by rerunning the stage, from its newest checkpoint)."""
    try:
        return read_json(path)
    except DamagedFile as error:
        aside = Path(path).with_name(Path(path).name + ".damaged")
        os.replace(path, aside)
        say(tag, f"{error}; moved to {aside.name} and recomputing it")
        return None


def cell_dir(out: Path, preset: str, seed: int) -> Path:
    return Path(out) / "cells" / preset / f"seed{seed}"


def cell_lock(cell: Path) -> FileLock:
    """The lock of the cell folder `cell` (a `seed<k>.lock` file beside it; see the module docstring)."""
    cell = Path(cell)
    cell.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(cell.with_name(cell.name + ".lock"))


def acquire_cell(lock: FileLock, what: str) -> None:
    """Take `lock`; when another process holds it, say so and wait for it to finish."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say("study", f"{what}: another process is running this cell; waiting for it to finish")
        lock.acquire()
        say("study", f"{what}: the other process has finished; continuing from what it left")


# ---------------------------------------------------------------------------------------------- fingerprints
def builtin_task_args(config) -> dict:
    """The keyword arguments of the task's `build_datasets` for the built-in study's cells (one place for the cell and
    its fingerprint): the problems come from the study's first seed."""
    return dict(
        num_train=config.num_train_problems,
        num_rl=config.num_rl_problems,
        num_test=config.num_test_problems,
        seed=config.seed,
    )


def _task_settings(config) -> dict:
    task = config.study_task()
    settings = {f"task.{k}": v for k, v in task.settings().items()}
    settings["task"], settings["task.judge"] = task.name, task.judge
    return settings


def _file_hash(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return "missing"


def cell_fingerprint(config, preset: str) -> dict:
    """Everything that determines the cell (`preset`, any seed) of `config`, as a flat dict of JSON values."""
    from .. import __version__

    fingerprint = {
        f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in STUDY_LEVEL_FIELDS
    }
    fingerprint["trl_shaped_version"] = __version__
    if config.builtin:
        fingerprint.update(_task_settings(config))
    else:
        fingerprint.update({f"{name} contents": _file_hash(path) for name, path in _run_files(config, preset).items()})
    return json.loads(json.dumps(fingerprint, default=str))  # as it reads back from disk


def _run_files(config, preset: str) -> dict:
    """Real scale: the files a cell's commands read, by what they are: each stage's `--config` recipe and the
    launcher's `--config_file`, taken from the commands the runner builds (so they are the ones used)."""
    from .runner import launcher, stage_commands

    def after(argv, flag):
        return argv[argv.index(flag) + 1] if flag in argv else None

    files = {f"{stage} recipe": after(argv, "--config") for stage, argv in stage_commands(config, preset, 0, Path("c"))}
    files["accelerate_config"] = after(launcher(config), "--config_file")
    return files


def tokenizer_fingerprint(config) -> dict:
    """What determines the built-in task's shared tokenizer (`<output_dir>/tokenizer`): its kind and size and the
    stage-1 text it is trained on."""
    from .. import __version__

    names = ("tokenizer", "bpe_vocab_size", "num_train_problems", "seed")
    return (
        {name: getattr(config, name) for name in names} | {"trl_shaped_version": __version__} | _task_settings(config)
    )


def fingerprint_changes(recorded: dict | None, current: dict) -> list[str]:
    """`field: old -> new` for every entry that differs; a missing record is one change."""
    if recorded is None:
        return [f"no readable {FINGERPRINT} (computed before fingerprints were recorded, or the file is damaged)"]

    def show(values: dict, name: str) -> str:
        return repr(values[name]) if name in values else "(not recorded)"

    return [
        f"{name}: {show(recorded, name)} -> {show(current, name)}"
        for name in sorted(set(recorded) | set(current))
        if name not in recorded or name not in current or recorded[name] != current[name]
    ]


def recorded_fingerprint(folder: Path) -> dict | None:
    """The fingerprint recorded in `folder` (a cell or the tokenizer), None without one; a damaged record reads as
    none (it cannot vouch for the folder)."""
    try:
        return read_json(Path(folder) / FINGERPRINT)
    except DamagedFile:
        return None


def stale_changes(folder: Path, current: dict) -> list[str]:
    """The changes (see `fingerprint_changes`) between what `folder` was computed with and `current`; empty when
    the folder does not exist or holds nothing yet."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return []
    return fingerprint_changes(recorded_fingerprint(folder), current)


def clear_folder(folder: Path) -> None:
    """Delete what `folder` holds (the folder itself stays)."""
    for child in Path(folder).iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
