"""Where a study keeps a cell and how a cell's files are written and read: shared by the runner and the built-in cell.

    <output_dir>/cells/<preset>/seed<k>/                  the cell's files (stage records, checkpoints, log)
    <output_dir>/cells/<preset>/seed<k>/fingerprint.json  what determines the cell (written before it computes)
    <output_dir>/cells/<preset>/seed<k>/result.json       a finished cell: written atomically, last
    <output_dir>/cells/<preset>/seed<k>.lock              held by the process running the cell
    <output_dir>/tokenizer/fingerprint.json               what determines the built-in task's shared tokenizer

Fingerprint (`cell_fingerprint`): everything that can change the cell, and nothing else. The `StudyConfig` fields
its backend uses (`config.cell_fields`: neither the study-level ones nor the other backend's), its preset and its own
seed (and on the built-in task the seed its problems come from, `data_seed`), the task with its settings and judge,
the world size it trains at, the versions of the libraries that compute it (`DEPENDENCIES`), the digest of every file
of the package's source but those that only report or launch (`REPORT_MODULES`), and at real scale the contents of
the recipes, of the accelerate file, of local data files and the base model's revision. The shared tokenizer's
fingerprint covers the text it is trained on. A rerun compares its own fingerprint with the recorded one before any
compute (`fingerprint_changes`: one entry per change, naming the file of the package that changed); a cell without
a record (written before fingerprints existed) counts as differing.

Lock. `cell_lock` is a `filelock.FileLock`: `flock(2)` on Linux, which the kernel releases when the holding process
ends, however it ends, so a killed process never leaves a lock behind (on a filesystem without `flock`, filelock
>= 3.24 falls back to its own soft lock). The lock file sits beside the cell's folder, so a cell can be cleared while
locked. The process that writes a cell holds it (`owned_cell`): the built-in cell's worker, the real-scale cell's
runner.
"""

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import threading
from functools import lru_cache
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from .commands import launcher, stage_commands, world_size
from .sources import source_digests

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
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # another process moved it aside first: recomputed all the same
            pass
        say(tag, f"{error}; moved to {aside.name} and recomputing it")
        return None


def cell_dir(out: Path, preset: str, seed: int) -> Path:
    return Path(out) / "cells" / preset / f"seed{seed}"


def cell_lock(cell: Path) -> FileLock:
    """The lock of the cell folder `cell` (a `seed<k>.lock` file beside it; see the module docstring)."""
    cell = Path(cell)
    cell.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(cell.with_name(cell.name + ".lock"))


def acquire_cell(lock: FileLock, what: str, tag: str = "study") -> None:
    """Take `lock`; when another process holds it, say so and wait for it to finish."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(tag, f"{what}: another process is running this cell; waiting for it to finish")
        lock.acquire()
        say(tag, f"{what}: the other process has finished; continuing from what it left")


# ---------------------------------------------------------------------------------------------- fingerprints
# The modules that only report or launch: editing them changes no cell.
REPORT_MODULES = tuple(
    f"trl_shaped.study.{name}" for name in ("report", "claims", "figures", "stats", "runner", "launchers", "sources")
) + ("trl_shaped.scripts.study", "trl_shaped.scripts.demo")
# The libraries whose version can change a cell's numbers.
DEPENDENCIES = ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "tokenizers")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SAMPLED_BYTES = 1 << 16  # of a weights file: its size and its first and last 64 KiB (the header and metadata)


def dependency_versions() -> dict:
    """The installed version of each of `DEPENDENCIES` (None: not installed)."""
    versions = {}
    for name in DEPENDENCIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def builtin_task_args(config) -> dict:
    """The keyword arguments of the task's `build_datasets` for the built-in study's cells (one place for the cell and
    its fingerprint): the problems come from the study's first seed."""
    return dict(
        num_train=config.num_train_problems,
        num_rl=config.num_rl_problems,
        num_test=config.num_test_problems,
        seed=config.seed,
    )


def builtin_task_data(config):
    """The built-in study's data (`DatasetDict` sft, rl, test): the same problems in every cell."""
    return config.study_task().build_datasets(**builtin_task_args(config))


def tokenizer_corpus(config, data) -> list[str]:
    """The text the built-in task's shared tokenizer is built from: the stage-1 text (BPE), the task's alphabet
    (char)."""
    if config.tokenizer == "char":
        return [config.study_task().alphabet()]
    return [row["prompt"] + row["completion"] for row in data["sft"]]


def _task_settings(config) -> dict:
    task = config.study_task()
    settings = {f"task.{k}": v for k, v in task.settings().items()}
    settings["task"], settings["task.judge"] = task.name, task.judge
    return settings


@lru_cache(maxsize=1024)
def _file_digest(path: str, mtime_ns: int, size: int, sampled: bool) -> str:
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as stream:
        if sampled and size > 2 * SAMPLED_BYTES:
            digest.update(stream.read(SAMPLED_BYTES))
            stream.seek(size - SAMPLED_BYTES)
            digest.update(stream.read())
        else:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def path_digest(path: str | Path | None, sample_weights: bool = False) -> str | None:
    """sha256[:16] of a file's contents, or of a folder's files (names and contents); "missing" when absent. With
    `sample_weights` a weights file counts by its size, first and last 64 KiB (cheap on a model folder)."""
    if path is None:
        return None
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    if not files:
        return "missing"
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        sampled = sample_weights and file.suffix in WEIGHT_SUFFIXES
        name = file.relative_to(path).as_posix() if path.is_dir() else ""
        digest.update(f"{name}:{_file_digest(str(file), stat.st_mtime_ns, stat.st_size, sampled)};".encode())
    return digest.hexdigest()[:16]


def hub_revision(name: str, kind: str) -> str:
    """A hub name as a cell reads it offline: `name@<commit>` from the local hub cache's `refs/main`, else the name."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"{kind}s--{name.replace('/', '--')}" / "refs" / "main"
        return f"{name}@{ref.read_text().strip()}"
    except (ImportError, OSError):
        return name


def _input_digest(value: str, kind: str) -> str:
    """A model or a data source: a local path by its contents, a hub name by its revision."""
    if Path(value).exists():
        return path_digest(value, sample_weights=kind == "model")
    return hub_revision(value, kind)


def _after(argv: list[str], flag: str) -> list[str] | None:
    """The words after the last `flag` of `argv` up to the next flag; None without one."""
    if flag not in argv:
        return None
    start = len(argv) - argv[::-1].index(flag)
    words = []
    for word in argv[start:]:
        if word.startswith("--"):
            break
        words.append(word)
    return words


def _recipe(path: str | None) -> dict:
    try:
        loaded = yaml.safe_load(Path(path).read_text()) if path else None
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def real_scale_inputs(config, preset: str, seed: int) -> dict:
    """Real scale: what a cell's commands read besides their arguments: each stage's recipe and the launcher's
    accelerate file (contents), the data each stage reads (`dataset_name`, `dataset_data_files`: the recipe's, or the
    command's override) and stage 1's base model (a local path by contents, a hub name by its cached revision)."""
    inputs = {}
    accelerate = _after(launcher(config), "--config_file")
    inputs["accelerate_config contents"] = path_digest(accelerate[0]) if accelerate else None
    for stage, argv in stage_commands(config, preset, seed, Path("cell")):
        recipe = (_after(argv, "--config") or [None])[0]
        inputs[f"{stage} recipe contents"] = path_digest(recipe)
        settings = _recipe(recipe)
        for key in ("dataset_name", "dataset_data_files"):
            values = _after(argv, f"--{key}")
            if values is None:
                values = settings.get(key)
                values = [] if values is None else values if isinstance(values, list) else [values]
            if values:
                inputs[f"{stage} {key}"] = [_input_digest(str(v), "dataset") for v in values]
    inputs["model revision"] = _input_digest(config.model_name_or_path, "model")
    return inputs


def cell_fingerprint(config, preset: str, seed: int) -> dict:
    """Everything that determines the cell (`preset`, `seed`) of `config` (see the module docstring), as a dict of
    JSON values (one entry per setting; the package's source and the library versions as one dict each)."""
    fingerprint = {"preset": preset, "seed": seed}
    fingerprint |= {name: getattr(config, name) for name in config.cell_fields()}
    if config.builtin:
        fingerprint["data_seed"] = config.seed  # the problems of every cell come from the first seed
        fingerprint |= _task_settings(config)
    else:
        fingerprint |= real_scale_inputs(config, preset, seed)
    fingerprint["world_size"] = world_size(config)
    fingerprint["versions"] = dependency_versions()
    fingerprint["trl_shaped source"] = source_digests(REPORT_MODULES)
    return json.loads(json.dumps(fingerprint, default=str))  # as it reads back from disk


def tokenizer_fingerprint(config, data=None) -> dict:
    """What determines the built-in task's shared tokenizer (`<output_dir>/tokenizer`): its kind and size, the text it
    is built from (`tokenizer_corpus` of the task's `data`, built when not given), the tokenizers library and the
    package's source."""
    data = builtin_task_data(config) if data is None and config.tokenizer != "char" else data
    corpus = hashlib.sha256("\0".join(tokenizer_corpus(config, data)).encode()).hexdigest()[:16]
    fingerprint = {"tokenizer": config.tokenizer, "corpus sha256": corpus}
    if config.tokenizer == "bpe":
        fingerprint["bpe_vocab_size"] = config.bpe_vocab_size
    fingerprint["versions"] = {"tokenizers": dependency_versions()["tokenizers"]}
    fingerprint["trl_shaped source"] = source_digests(REPORT_MODULES)
    return json.loads(json.dumps(fingerprint, default=str))


def _dict_changes(name: str, old: dict, new: dict) -> list[str]:
    """The entries of a dict-valued setting (the source, the versions) that differ, each named."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            lines.append(f"{name}: {key} added")
        elif key not in new:
            lines.append(f"{name}: {key} removed")
        elif old[key] != new[key]:
            lines.append(
                f"{name}: {key} changed" if name.endswith("source") else f"{name} {key}: {old[key]!r} -> {new[key]!r}"
            )
    return lines


def fingerprint_changes(recorded: dict | None, current: dict) -> list[str]:
    """`field: old -> new` for every entry that differs (a changed file of the package: `trl_shaped source:
    <file> changed`; a library: `versions <name>: old -> new`); a missing record is one change."""
    if recorded is None:
        return [f"no readable {FINGERPRINT} (computed before fingerprints were recorded, or the file is damaged)"]

    def show(values: dict, name: str) -> str:
        return repr(values[name]) if name in values else "(not recorded)"

    lines = []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name), current.get(name)
        if name in recorded and name in current and old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            lines += _dict_changes(name, old, new)
        else:
            lines.append(f"{name}: {show(recorded, name)} -> {show(current, name)}")
    return lines


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


def refusal(out: Path, stale: list[tuple[str, list[str]]]) -> str:
    """The one line a rerun with other settings stops with: which cells, which settings (old -> new), the ways on."""
    names = [name for name, _ in stale]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    changes = "; ".join(dict.fromkeys(change for _, found in stale for change in found))
    return (
        f"{out} holds results computed with other settings ({shown}: {changes}). Nothing was run: choose another "
        "--output_dir, or rerun with --overwrite true to recompute exactly what differs."
    )


def stale_cells(config, out: Path, cells: list[tuple[str, int]]) -> list[tuple[str, list[str]]]:
    """What of `out` was computed with other settings than `config`'s: (name, changes) per differing cell, and the
    built-in task's shared tokenizer. Reads fingerprints only (no training)."""
    stale = []
    for preset, seed in cells:
        changes = stale_changes(cell_dir(out, preset, seed), cell_fingerprint(config, preset, seed))
        if changes:
            stale.append((f"{preset} seed {seed}", changes))
    tokenizer = Path(out) / "tokenizer"
    if config.builtin and tokenizer.is_dir() and any(tokenizer.iterdir()):
        changes = stale_changes(tokenizer, tokenizer_fingerprint(config))
        if changes:
            stale.append(("the tokenizer", changes))
    return stale


@dataclasses.dataclass
class OwnedCell:
    """What `owned_cell` yields: the cell's result when it has finished, else None; and its held lock."""

    result: dict | None
    lock: FileLock


@contextlib.contextmanager
def owned_cell(config, preset: str, seed: int, cell: Path, tag: str = "study"):
    """Own the cell folder `cell` for the duration: hold its lock (waiting, with a line, while another process holds
    it), then check what it was computed with. A cell of other settings raises `StaleCells` (one line), or with
    `config.overwrite` is cleared; the cell's fingerprint is recorded. Yields an `OwnedCell`: the cell's result when it
    has finished (a damaged one is moved aside: `read_record`), else None (the caller computes it, holding the lock,
    or hands the lock to the worker that does: `children.start_child(..., ready=True)`)."""
    cell, name = Path(cell), f"{preset} seed {seed}"
    lock = cell_lock(cell)
    acquire_cell(lock, name, tag)
    try:
        cell.mkdir(parents=True, exist_ok=True)
        fingerprint = cell_fingerprint(config, preset, seed)
        changes = stale_changes(cell, fingerprint)
        if changes and not config.overwrite:
            raise StaleCells(refusal(cell.parents[2], [(name, changes)]))
        if changes:
            say(tag, f"{name}: computed with other settings ({'; '.join(changes)}); recomputing it (overwrite)")
            clear_folder(cell)
        if recorded_fingerprint(cell) is None:
            write_json_atomic(cell / FINGERPRINT, fingerprint)
        yield OwnedCell(read_record(cell / RESULT, tag), lock)
    finally:
        if lock.is_locked:  # (not when handed to a worker)
            lock.release()
