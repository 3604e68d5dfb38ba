"""The auxiliary supervised data of `ShapedGRPOTrainer`: checked up front, then prepared by TRL's own SFT preparation.

`SFTTrainer`'s dataset preparation (ShareGPT to ChatML, EOS on plain text and completions, chat templates, the
completion mask turned into -100 labels, truncation) is run as it is (`compat.prepare_sft_dataset`), so the aux loss
trains on exactly the tokens stage-1 SFT would. This module adds the checks that give a clear error before it and the
rows it cannot score (the first position predicts nothing).
"""

from accelerate import PartialState
from datasets import Dataset
from transformers.utils import logging

from .compat import prepare_sft_dataset

logger = logging.get_logger(__name__)

AUX_LAYOUTS = (
    "a 'text' column, a conversational 'messages' column (or ShareGPT 'conversations'), 'prompt' and 'completion' "
    "columns (the loss then scores the completion only), or tokenized 'input_ids' (with optional 'labels')"
)


def check_aux_dataset(dataset) -> None:
    """Raise before any compute when `aux_dataset` is not a non-empty map-style dataset of a layout we can train on."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"aux_dataset must be a datasets.Dataset (map-style), got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("aux_dataset is empty (0 rows): pass supervised rows, or set shaping_aux_coef=0")
    columns = set(dataset.column_names)
    if not ({"text", "messages", "conversations", "input_ids"} & columns or {"prompt", "completion"} <= columns):
        raise ValueError(
            f"aux_dataset has columns {sorted(columns)}, none of which the auxiliary shaped loss can train on. It "
            f"needs {AUX_LAYOUTS}. Rename a column (Dataset.rename_column) or map the rows to one of these layouts."
        )


def _text_columns(dataset: Dataset) -> list[str]:
    # The columns SFT's preparation reads as plain strings (it appends EOS with `str.endswith`)
    columns = dataset.column_names
    if "input_ids" in columns or "conversations" in columns or "messages" in columns:
        return []
    if "prompt" in columns and "completion" in columns:
        first = dataset[0]
        return [] if isinstance(first["prompt"], list) else ["prompt", "completion"]
    return ["text"]


def check_text_values(dataset: Dataset) -> None:
    """Raise a TypeError naming the column and row of the first text value that is not a string."""
    for column in _text_columns(dataset):
        for index, value in enumerate(dataset[column]):
            if not isinstance(value, str):
                raise TypeError(
                    f"aux_dataset column {column!r}, row {index}: expected a string, got {type(value).__name__} "
                    f"({value!r}); clean or filter such rows before training"
                )


def prepare_aux_dataset(dataset: Dataset, tokenizer, max_length: int) -> Dataset:
    """Tokenise `aux_dataset` as `SFTTrainer` does (completion-only loss on prompt-completion rows), truncate it to
    `max_length` tokens (keeping the start) and drop the rows left with no scored token; raise when none is left.

    Args:
        dataset ([`~datasets.Dataset`]): checked by [`check_aux_dataset`].
        tokenizer: the trainer's tokenizer.
        max_length (`int`): `aux_max_length`.

    Returns:
        [`~datasets.Dataset`] with `input_ids` and `labels` (-100 where not scored).
    """
    check_aux_dataset(dataset)
    check_text_values(dataset)
    prepared = prepare_sft_dataset(dataset, tokenizer, max_length=max_length, dataset_name="aux")
    with PartialState().main_process_first():  # a dataset on disk: one process writes the cache, the others read it
        prepared = prepared.select_columns(["input_ids", "labels"])
        # The first position predicts nothing (labels are shifted inside the loss): a row needs a label after it
        prepared = prepared.filter(lambda row: any(label != -100 for label in row["labels"][1:]))
    dropped = len(dataset) - len(prepared)
    if len(prepared) == 0:
        raise ValueError(
            f"aux_dataset is empty after preparation: all {dropped} rows were dropped because none has a token to "
            f"score within aux_max_length={max_length} (their prompt fills it, or the row is shorter than 2 tokens). "
            "Raise aux_max_length or shorten the prompts."
        )
    if dropped:
        logger.warning(
            f"aux_dataset: dropped {dropped} of {len(dataset)} rows with no token to score within "
            f"aux_max_length={max_length}"
        )
    return prepared
