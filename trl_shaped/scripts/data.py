"""Dataset arguments and loading shared by the `sft`, `grpo` and `eval` scripts.

A dataset is named the way `datasets.load_dataset` takes it (a hub name or a local directory), or is a single data
file (.json/.jsonl/.csv/.parquet/.txt), or is given as `dataset_data_files` (a file, or split=file pairs) so that
local data need no loading script.

TRL's dataset mixture (`datasets:` in a YAML config, `trl.get_dataset`) is used as it is when given
(`loading.load_script_datasets`). It is not enough for data files alone: it concatenates every entry into one
"train" split (or a random train/test split), while these scripts take named splits from files (`train=`, `test=`,
and GRPO's auxiliary `aux=`).
"""

import os
from dataclasses import dataclass, field

from trl import ScriptArguments

# file extension -> the `datasets` builder that reads it
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


@dataclass
class ShapedScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` plus local data files.

    Args:
        dataset_data_files (`list[str]`, *optional*):
            Data files for the dataset, either paths (all read as the train split) or `split=path` pairs, e.g.
            `train=data/train.jsonl test=data/test.jsonl`. The format follows the extension
            (.json/.jsonl/.csv/.parquet/.txt). With data files, `dataset_name` may be left unset.
    """

    dataset_data_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local data files: paths (read as the train split) or split=path pairs, e.g. "
            "`train=data/train.jsonl test=data/test.jsonl`; the format follows the extension "
            "(.json/.jsonl/.csv/.parquet/.txt)."
        },
    )


def _builder_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in DATA_FILE_BUILDERS:
        raise ValueError(f"data file {path!r} has an unsupported extension; use one of {sorted(DATA_FILE_BUILDERS)}")
    return DATA_FILE_BUILDERS[ext]


def _parse_data_files(data_files) -> dict[str, list[str]]:
    if isinstance(data_files, str):
        data_files = [data_files]
    if isinstance(data_files, dict):
        return {split: [p] if isinstance(p, str) else list(p) for split, p in data_files.items()}
    splits: dict[str, list[str]] = {}
    for item in data_files:
        split, _, path = item.rpartition("=") if "=" in item else ("train", "", item)
        splits.setdefault(split, []).append(path)
    return splits


def load_datasets(dataset_name: str | None = None, *, name: str | None = None, data_files=None, streaming=False):
    """Load a `datasets.DatasetDict` from a hub name, a local directory, a single data file, or data files.

    Args:
        dataset_name (`str`, *optional*): hub name, local directory or data file.
        name (`str`, *optional*): dataset configuration name.
        data_files (*optional*): a path, a list of paths / `split=path` strings, or a dict split -> path(s).
        streaming (`bool`): stream instead of downloading.
    """
    from datasets import load_dataset

    if data_files:
        splits = _parse_data_files(data_files)
        builders = {_builder_for(p) for paths in splits.values() for p in paths}
        if len(builders) != 1:
            raise ValueError(f"dataset_data_files must all have one format, got {sorted(builders)}")
        return load_dataset(builders.pop(), data_files=splits, streaming=streaming)
    if dataset_name is None:
        raise ValueError("a dataset is required: set dataset_name (hub name, directory or file) or dataset_data_files")
    if os.path.isfile(dataset_name):
        return load_dataset(_builder_for(dataset_name), data_files={"train": dataset_name}, streaming=streaming)
    return load_dataset(dataset_name, name=name, streaming=streaming)


def load_split(dataset_name: str | None, split: str, *, name: str | None = None, data_files=None):
    """One split of `load_datasets(...)`; a single data file has one split and is returned whatever `split` says."""
    dataset = load_datasets(dataset_name, name=name, data_files=data_files)
    if split in dataset:
        return dataset[split]
    if dataset_name is not None and not data_files and os.path.isfile(dataset_name):
        return next(iter(dataset.values()))
    raise ValueError(f"split {split!r} not found; available splits: {sorted(dataset)}")
