"""`ShapedSFTTrainer`: TRL's `SFTTrainer` trained with the rank-aware shaped loss (docs/method.md), never building
logits.

The loss runs through the model's patched LM head (`lm_head.add_shaped_lm_head`), as TRL's `fused_lm_head=True` does.
This file adds what a trainer needs around it: the up-front dataset checks (a clear error instead of one from deep
inside TRL or torch), the token-weighted diagnostics in the train and eval logs, and the model card.
"""

import dataclasses
import inspect
import math
from pathlib import Path

import pyarrow as pa
import torch
from datasets import Dataset
from transformers.utils import logging
from trl import SFTTrainer
from trl.data_utils import is_conversational, is_conversational_from_value

from .checkpoints import SafeCheckpointsMixin
from .diagnostics import STAT_NAMES
from .fsdp import check_fsdp_version
from .lm_head import add_shaped_lm_head, check_shaped_output
from .paper import PAPER
from .shaping import ShapingConfig

logger = logging.get_logger(__name__)

__all__ = ["ShapedSFTTrainer", "check_sft_dataset"]


def _dataset_argument(name: str) -> str:
    # SFTTrainer names its datasets "train", "eval" or the key of an eval dict; users passed them as these arguments.
    return {"train": "train_dataset", "eval": "eval_dataset"}.get(name, f"eval_dataset[{name!r}]")


def _first_example(dataset, argument: str) -> dict:
    # SFTTrainer reads the first example to pick the layout; on an empty dataset that is a bare StopIteration.
    empty = ValueError(f"{argument} is empty (0 rows): pass a dataset with at least one example")
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise empty
    try:
        return next(iter(dataset))
    except StopIteration:
        raise empty from None


def _check_string_column(dataset, argument: str, column: str, first: dict) -> None:
    # SFTTrainer appends EOS with `str.endswith`: None or a number fails there with an AttributeError. Arrow knows the
    # column's type and its null count without reading the rows (and honours `select` / `shuffle` indices).
    if isinstance(dataset, Dataset):
        values = dataset.with_format("arrow")[column]
        kind, count = str(values.type), len(values)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            kind, count = "None", values.null_count
    else:  # streaming: only the first row is known without consuming the stream
        kind, count = type(first[column]).__name__, int(not isinstance(first[column], str))
    if count:
        offending = f"{count} of {len(dataset)} rows" if isinstance(dataset, Dataset) else "its first row"
        raise ValueError(
            f"{argument} column {column!r} must hold a string in every row, but {offending} hold {kind} values. Drop or "
            f"fill those rows (e.g. `dataset.filter(lambda row: isinstance(row[{column!r}], str))`) or cast the "
            "column to strings."
        )


def check_sft_dataset(dataset, argument: str, args, formatting_func=None) -> None:
    """Fail with a clear `ValueError` on a dataset that `SFTTrainer` cannot prepare, before any model work.

    The layouts accepted are exactly those `SFTTrainer._prepare_dataset` (TRL 1.16) trains on, decided like it does
    from the columns and the first example: tokenized `input_ids`; anything with a `formatting_func`; ShareGPT-style
    `conversations` of `{"from", "value"}` turns (TRL converts them to `messages`); `prompt` and `completion`;
    conversational `messages` of `{"role", "content"}` turns; or a text column named by `args.dataset_text_field`.
    Text columns must hold strings in every row.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`, *optional*): the dataset (`None` passes).
        argument (`str`): how the user passed it, for the message (`"train_dataset"`, `"eval_dataset"`).
        args ([`~trl.SFTConfig`], *optional*): the config (`dataset_text_field`, `dataset_kwargs`).
        formatting_func (`Callable`, *optional*): SFTTrainer's `formatting_func`.
    """
    if dataset is None:
        return
    first = _first_example(dataset, argument)
    skip_prepare = (getattr(args, "dataset_kwargs", None) or {}).get("skip_prepare_dataset")
    if formatting_func is not None or skip_prepare or not isinstance(first, dict):
        return
    if isinstance(dataset, Dataset) and dataset.format["type"] == "custom":
        return  # `with_transform`: SFTTrainer refuses it with its own message
    columns = set(first)
    text_field = getattr(args, "dataset_text_field", "text")
    if "input_ids" in columns or is_conversational_from_value(first):
        return
    if "prompt" in columns:  # SFTTrainer takes a row with a prompt as prompt-completion
        if "completion" not in columns:
            raise ValueError(
                f"{argument} has a 'prompt' column but no 'completion' column; SFTTrainer needs both for "
                "prompt-completion data. Add a 'completion' column, or rename 'prompt' to train on it as plain text."
            )
        if not is_conversational(first):
            for column in ("prompt", "completion"):
                _check_string_column(dataset, argument, column, first)
        return
    if is_conversational(first):  # SFTTrainer reads `messages` then
        return
    if text_field in columns:
        _check_string_column(dataset, argument, text_field, first)
        return
    raise ValueError(
        f"{argument} has columns {sorted(columns)}, none of which SFT can train on. It needs a text column named by "
        f"`dataset_text_field` (currently {text_field!r}), a conversational 'messages' column of role/content turns, "
        "a ShareGPT-style 'conversations' column of from/value turns, 'prompt' and 'completion' columns, or tokenized "
        "'input_ids'. Rename a column, set `dataset_text_field` in the config, or pass a `formatting_func`."
    )


def _sample_ids(inputs: dict) -> torch.Tensor:
    """(B, T) index of the sample each position belongs to: its row, or with padding-free batches (one row of packed
    sequences, `position_ids` restarting at 0) its sequence."""
    input_ids = inputs["input_ids"]
    if "attention_mask" not in inputs and "position_ids" in inputs and input_ids.size(0) == 1:
        return ((inputs["position_ids"] == 0).cumsum(dim=-1) - 1).clamp_min(0)
    return torch.arange(input_ids.size(0), device=input_ids.device).unsqueeze(1).expand_as(input_ids)


class ShapedSFTTrainer(SafeCheckpointsMixin, SFTTrainer):
    """[`~trl.SFTTrainer`] that minimises the rank-aware shaped loss of arXiv 2512.22955 (see docs/method.md).

    A drop-in replacement: everything `SFTTrainer` accepts works the same (plain-text, prompt-completion and
    conversational datasets, completion-only and assistant-only loss, packing and padding-free, eval, `peft_config`,
    DeepSpeed), only the loss changes, as set by the `shaping_*` fields of [`ShapedSFTConfig`]. The loss is computed
    in chunks from the final hidden states and the LM head, never building the `(batch, seq_len, vocab)` logits. Train
    and eval logs carry, beside the (surrogate) loss, the plain `nll` and `perplexity` and the distribution diagnostics
    `entropy`, `topk_entropy`, `topk_mass`, `tail_mass`, `target_prob`, `target_in_topk` and `mean_token_accuracy`,
    each summed over tokens, micro-batches and processes and divided once.

    Args:
        model, args, data_collator, train_dataset, eval_dataset, processing_class, compute_loss_func,
        compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics,
        quantization_config, peft_config, formatting_func: as in [`~trl.SFTTrainer`]. `args` should be a
            [`ShapedSFTConfig`]; any other `TrainingArguments` trains with plain cross-entropy. `loss_type="dft"`,
            `compute_loss_func` and label smoothing replace the loss, so they are accepted only with a
            cross-entropy shaping (then the stock SFTTrainer loss runs).
    """

    _tag_names = ["trl", "sft", "trl_shaped"]
    _name = "Shaped SFT"
    _paper = PAPER

    def __init__(self, *args, **kwargs):
        bound = inspect.signature(SFTTrainer.__init__).bind(self, *args, **kwargs).arguments
        sft_args = bound.get("args")
        formatting_func = bound.get("formatting_func")
        eval_dataset = bound.get("eval_dataset")
        eval_datasets = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
        # Checked again in `_prepare_dataset`; here it fails before the model is loaded
        for name, dataset in {"train": bound.get("train_dataset"), **eval_datasets}.items():
            check_sft_dataset(dataset, _dataset_argument(name), sft_args, formatting_func)
        super().__init__(*args, **kwargs)
        check_fsdp_version(self.accelerator)
        self.shaping = getattr(self.args, "shaping", ShapingConfig())
        replaced = [
            name
            for name, active in (
                ("loss_type='dft'", self.args.loss_type == "dft"),
                ("compute_loss_func", self.compute_loss_func is not None),
                ("label_smoothing_factor", self.label_smoother is not None),
                ("DeepSpeed sequence parallelism", self._deepspeed_sequence_parallel()),
            )
            if active
        ]
        # Those paths compute their own loss; silently dropping the shaping would train something else than asked
        self._use_stock_loss = bool(replaced)
        if replaced and not self.shaping.is_cross_entropy:
            raise ValueError(
                f"{', '.join(replaced)} replaces the training loss, so it cannot be combined with the shaped loss "
                f"({self.shaping}). Remove it, or use a cross-entropy shaping (shaping_preset='ce')."
            )
        add_shaped_lm_head(self.model)
        self._shaped_sums = {"train": {}, "eval": {}}
        self._warned_no_scored_tokens = False

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        # SFTTrainer's own preparation (also run by `evaluate` on a dataset passed to it), framed by checks that turn
        # its failures deep inside TRL or torch into errors naming the dataset and what to change.
        argument = _dataset_argument(dataset_name)
        check_sft_dataset(dataset, argument, args, formatting_func)
        prepared = super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        # Without packing the only rows SFTTrainer removes are those that truncation to `max_length` leaves with no
        # label to train on; with packing the row count changes by design.
        if packing or not isinstance(dataset, Dataset) or not isinstance(prepared, Dataset):
            return prepared
        dropped = len(dataset) - len(prepared)
        if dropped == 0:
            return prepared
        columns = "'prompt'" if "prompt" in dataset.column_names else "the text"
        what = (
            f"{dropped} of {len(dataset)} rows of {argument} were dropped: after truncation to "
            f"max_length={args.max_length} (truncation_mode={args.truncation_mode!r}) they had no token left to train "
            f"on (every label -100), e.g. because {columns} column alone fills max_length"
        )
        fix = "Increase `max_length` (or set it to None), or shorten those rows"
        if len(prepared) == 0:
            raise ValueError(f"{what}, so nothing is left to train on. {fix}.")
        logger.warning(f"{what}. {fix} to keep them.")
        return prepared

    def _deepspeed_sequence_parallel(self) -> bool:
        config = self.accelerator.parallelism_config
        return config is not None and getattr(config, "sp_backend", None) == "deepspeed" and config.sp_enabled

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._use_stock_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        # Eval diagnostics are summed per sample so that `gather_for_metrics` can drop the samples accelerate repeats
        # to even out the last batch over processes, as stock TRL's eval metrics do.
        groups = {"stats_groups": _sample_ids(inputs)} if mode == "eval" else {}
        outputs = model(**inputs, shaped_lm_head=self.shaping, num_items_in_batch=num_items_in_batch, **groups)
        check_shaped_output(outputs)
        loss = outputs.loss
        # From here on the normalisation is SFTTrainer's (sft_trainer.py, compute_loss), which has no hook to reuse:
        # `num_items_in_batch` counts the tokens of every rank, and DDP / DeepSpeed average the gradients over ranks.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if self.aux_loss_enabled:
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())

        self._accumulate_stats(mode, outputs.stats)
        if mode == "train":
            self._count_train_tokens(inputs)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

        if return_outputs:
            # Only `compute_metrics` / `preprocess_logits_for_metrics` need this: the logits take an extra forward
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k not in ("labels", "output_router_logits")})
            return loss, outputs
        return loss

    def _accumulate_stats(self, mode: str, stats: dict) -> None:
        # Sums, reduced over processes: `log` divides once by the token count (a mean of per-batch means would weight
        # a batch with few scored tokens like a full one). Eval stats are per sample: (samples, keys).
        keys = (*STAT_NAMES, "num_tokens")
        local = torch.stack(
            [torch.as_tensor(stats[k], dtype=torch.float64, device=self.accelerator.device) for k in keys], dim=-1
        )
        if local.dim() == 2:
            total = self.accelerator.gather_for_metrics(local).sum(dim=0).tolist()
        else:
            total = self.accelerator.reduce(local, reduction="sum").tolist()
        sums = self._shaped_sums[mode]
        for key, value in zip(keys, total, strict=True):
            sums[key] = sums.get(key, 0.0) + value

    def _count_train_tokens(self, inputs: dict) -> None:
        # SFTTrainer's rule (inline in its compute_loss, which this class replaces: there is no method to call): input
        # tokens (padding excluded), or the packed row length under padding-free
        if "attention_mask" in inputs:
            local = inputs["attention_mask"].sum()
        else:
            local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
        self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // self._tp_size

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        sums, self._shaped_sums[mode] = self._shaped_sums[mode], {}
        n = sums.pop("num_tokens", None)
        if n:
            means = {key: value / n for key, value in sums.items()}
            means["mean_token_accuracy"] = means.pop("top1_accuracy")
            means["perplexity"] = math.exp(min(means["nll"], 700.0))  # exp overflows float64 past ~709
            # SFTTrainer.log averages `_metrics`, prefixes eval keys and clears them: one value per key gives the mean
            for key, value in means.items():
                self._metrics[mode][key] = [value]
        elif n is not None:
            # Means over no token: 0 would read as a perfect model (loss 0, nll 0, perplexity 1). The diagnostics are
            # left out and the loss, a sum over no token, becomes NaN (`evaluate` returns this same dict).
            for key in logs:
                if key == "loss" or (mode == "eval" and key.endswith("_loss") and not key.endswith("aux_loss")):
                    logs[key] = float("nan")
            if not self._warned_no_scored_tokens:
                self._warned_no_scored_tokens = True
                logger.warning(
                    f"A {mode} logging window had no scored token (every label -100 after the shift, e.g. empty texts "
                    "or max_length=1): its loss is logged as NaN and nll, perplexity, entropy and the other "
                    "diagnostics are not logged. This warning is shown once."
                )
        super().log(logs, start_time)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, tagged `trl_shaped`, with the shaping settings in its metadata and text."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        from huggingface_hub import ModelCard

        path = Path(self.args.output_dir) / "README.md"
        card = ModelCard.load(path)
        settings = dataclasses.asdict(self.shaping)  # the resolved settings, whatever fields ShapingConfig has
        preset = getattr(self.args, "shaping_preset", None)
        card.data["trl_shaped"] = {"shaping_preset": preset, **settings}
        rows = "\n".join(f"| `{name}` | `{value}` |" for name, value in settings.items())
        card.text += (
            "\n## Shaped loss\n\nTrained with `trl_shaped`, the rank-aware reward-shaped next-token loss of "
            f"[arXiv:2512.22955](https://arxiv.org/abs/2512.22955) (preset: `{preset}`).\n\n"
            f"| setting | value |\n|---|---|\n{rows}\n"
        )
        card.save(path)
