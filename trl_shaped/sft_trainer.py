"""`ShapedSFTTrainer`: TRL's `SFTTrainer` trained with the rank-aware shaped loss (METHOD.md), never building logits.

The data flow mirrors TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`): `add_shaped_lm_head` patches the
model's forward so that `model(**batch, shaped_lm_head=ShapingConfig(...))` runs the backbone and then the chunked
`fused_linear_shaped_loss` on the final hidden states and the LM-head weight. The loss runs *as the LM head's own
forward*: under DeepSpeed ZeRO-3 a module's parameters are gathered by its own forward hook and gathered again for its
backward, so the sharded head weight is whole while the loss reads it and its gradient lands on the sharded parameter
exactly as it does for the model's native head. `shaped_causal_lm_loss` exposes the same path to other trainers (the
GRPO auxiliary loss).
"""

import functools
import inspect
import math
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from accelerate.utils import extract_model_from_parallel, is_peft_model
from transformers.utils import ModelOutput
from trl import SFTTrainer

from .checkpoints import SafeCheckpointsMixin
from .diagnostics import STAT_NAMES
from .fused_loss import fused_linear_shaped_loss
from .shaping import ShapingConfig


PAPER = {
    "title": "Diversity or Precision? A Deep Dive into Next Token Prediction",
    "id": "2512.22955",
    "citation": """\
@article{wu2025diversity,
    title   = {{Diversity or Precision? A Deep Dive into Next Token Prediction}},
    author  = {Haoyuan Wu and Hai Wang and Jiajia Wu and Jinxiang Ou and Keyao Wang and Weile Chen and Zihao Zheng
               and Bei Yu},
    year    = 2025,
    journal = {arXiv preprint arXiv:2512.22955}
}""",
}


@dataclass
class ShapedCausalLMOutput(ModelOutput):
    """Output of a forward with `shaped_lm_head=...`.

    Args:
        loss (`torch.Tensor`): the shaped loss, normalised like TRL's fused NLL (sum over scored tokens divided by
            their count, or by `num_items_in_batch` when given). The MoE auxiliary loss is not included.
        stats (`dict[str, torch.Tensor]`): detached float32 sums over the scored tokens of `STAT_NAMES`, plus
            `num_tokens`.
        aux_loss (`torch.Tensor`, *optional*): the MoE load-balancing loss, unweighted, when router logits were
            asked for.
    """

    loss: torch.Tensor | None = None
    stats: dict | None = None
    aux_loss: torch.Tensor | None = None


def _logit_transform(text_config) -> tuple[float, float | None]:
    # The same config fields TRL's `add_fused_lm_head` reads (it reads them inline, so there is no function to reuse):
    # a multiplier on the logits under one of several names, or a divisor (`logits_scaling`), then a final softcap.
    scale = getattr(text_config, "logit_scale", None)
    for name in ("output_multiplier", "lm_head_multiplier"):
        if scale is None:
            scale = getattr(text_config, name, None)
    if scale is None and getattr(text_config, "logits_scaling", None) is not None:
        divisor = text_config.logits_scaling
        scale = divisor if text_config.model_type == "hyperclovax" else 1 / divisor
    return (1.0 if scale is None else scale), getattr(text_config, "final_logit_softcapping", None)


def _weight_owner(lm_head: torch.nn.Module) -> torch.nn.Module:
    # A PEFT `modules_to_save` wrapper holds no parameter itself; ZeRO-3 gathers a module's own parameters only, so
    # the loss must run in the module that owns the weight.
    if "weight" in lm_head._parameters:
        return lm_head
    for module in lm_head.modules():
        if module._parameters.get("weight") is lm_head.weight:
            return module
    raise ValueError(f"cannot find the module that owns the LM-head weight in {type(lm_head).__name__}")


def _shaped_head_forward(self, hidden_states, *, labels, **loss_kwargs):
    return fused_linear_shaped_loss(
        hidden_states, self.weight, labels, bias=getattr(self, "bias", None), return_stats=True, **loss_kwargs
    )


def _run_as_head_forward(head: torch.nn.Module, hidden_states, labels, **loss_kwargs):
    # Calling the module (not a function on `head.weight`) fires its hooks: ZeRO-3's gather before the loss, the
    # re-gather before its backward and the gradient reduction after it. The instance `forward` is restored after,
    # so generation and the plain forward never see the loss.
    previous = head.__dict__.get("forward")
    head.forward = types.MethodType(_shaped_head_forward, head)
    try:
        return head(hidden_states, labels=labels, **loss_kwargs)
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous


def add_shaped_lm_head(model: transformers.PreTrainedModel) -> None:
    """Patch `model` so that `model(..., labels=labels, shaped_lm_head=config)` returns a [`ShapedCausalLMOutput`].

    With `shaped_lm_head=None` (the default) the forward is the previous one, so generation and TRL's own
    `fused_lm_head=True` path are unchanged. Patch the base model (under PEFT: `peft_model.get_base_model()`); the
    backbone and the LM head are looked up on every call, since PEFT and DeepSpeed replace them after patching.
    Calling it twice is a no-op.

    Args:
        model ([`~transformers.PreTrainedModel`]): a causal language model with `get_output_embeddings()` and a
            backbone under `base_model_prefix`.

    The patched forward takes, besides the model's inputs: `labels` (`(B, T)`, shifted inside like the model's own
    loss) or `shift_labels` (already aligned), `num_items_in_batch` (the normaliser, as in TRL) and `shaped_lm_head`
    (a [`ShapingConfig`]).
    """
    if getattr(model, "_trl_shaped_lm_head", False):
        return
    original_forward = model.forward
    text_config = model.config.get_text_config()
    logit_scale, final_logit_softcapping = _logit_transform(text_config)

    @functools.wraps(type(model).forward)
    def _forward(self, *args, shaped_lm_head=None, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if shaped_lm_head is None:
            extra = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
            return original_forward(*args, **kwargs, **{k: v for k, v in extra.items() if v is not None})
        if not isinstance(shaped_lm_head, ShapingConfig):
            raise TypeError(f"shaped_lm_head must be a ShapingConfig or None, got {type(shaped_lm_head).__name__}")
        if labels is None and shift_labels is None:
            raise ValueError("the shaped loss needs `labels` (or pre-shifted `shift_labels`), -100 where not scored")
        kwargs["use_cache"] = False
        if getattr(text_config, "output_router_logits", False):
            kwargs.setdefault("output_router_logits", True)
        backbone_outputs = self.base_model(*args, **kwargs)
        if shift_labels is None:
            hidden_states, labels = backbone_outputs.last_hidden_state[:, :-1], labels[:, 1:]
        else:
            hidden_states, labels = backbone_outputs.last_hidden_state, shift_labels
        head = _weight_owner(self.get_output_embeddings())
        # With the model split across devices (`device_map`), the backbone can end on another device than the head
        hidden_states, labels = hidden_states.to(head.weight.device), labels.to(head.weight.device)
        loss, stats = _run_as_head_forward(
            head,
            hidden_states,
            labels,
            config=shaped_lm_head,
            num_items_in_batch=num_items_in_batch,
            logit_scale=logit_scale,
            final_logit_softcapping=final_logit_softcapping,
        )

        aux_loss = None
        if kwargs.get("output_router_logits"):
            # As TRL's fused head: every MoE family in transformers shares Mixtral's load-balancing loss
            from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

            # Most MoE configs call the expert count `num_experts`; Mixtral-style ones `num_local_experts`
            num_experts = getattr(text_config, "num_experts", None) or text_config.num_local_experts
            aux_loss = load_balancing_loss_func(
                backbone_outputs.router_logits,
                num_experts,
                text_config.num_experts_per_tok,
                kwargs.get("attention_mask"),
            )
        return ShapedCausalLMOutput(loss=loss, stats=stats, aux_loss=aux_loss)

    model.forward = types.MethodType(_forward, model)
    model._trl_shaped_lm_head = True


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    model = extract_model_from_parallel(model)  # DDP, DeepSpeed engine, FSDP, torch.compile
    return model.get_base_model() if is_peft_model(model) else model


def shaped_causal_lm_loss(
    model: torch.nn.Module,
    inputs: dict,
    shaping: ShapingConfig,
    num_items_in_batch: torch.Tensor | int | None = None,
    return_stats: bool = False,
):
    """The shaped loss of a causal LM on a batch with `labels`, from its final hidden states and LM head (no logits).

    Runs the model's backbone and the chunked `fused_linear_shaped_loss` inside the model's forward, so it works on
    the model as the trainer holds it: plain, PEFT-wrapped, wrapped by DDP or by a DeepSpeed engine (ZeRO-3's sharded
    LM head is gathered for the loss and its gradient reaches the sharded parameter). Patches the model with
    [`add_shaped_lm_head`] on first use.

    Args:
        model (`torch.nn.Module`): the causal LM, or any wrapper of it whose forward passes keyword arguments through.
        inputs (`dict`): model keyword inputs (`input_ids`, `attention_mask` or `position_ids`, ...) with `labels`
            (`(B, T)`, -100 where not scored, shifted inside) or `shift_labels` (already aligned).
        shaping ([`ShapingConfig`]): the loss settings (`ShapingConfig()` is plain cross-entropy).
        num_items_in_batch (`int` or `torch.Tensor`, *optional*): divide the summed loss by this instead of the number
            of scored tokens (gradient accumulation / several processes, as in `Trainer`).
        return_stats (`bool`): also return the diagnostics: a dict of detached float32 sums over the scored tokens
            (`entropy`, `topk_entropy`, `topk_mass`, `tail_mass`, `target_prob`, `target_in_topk`, `top1_accuracy`,
            `nll`) plus `num_tokens`; divide by `num_tokens` after summing over micro-batches and processes.

    Returns:
        `torch.Tensor` (the loss), or `(loss, stats)` with `return_stats=True`. The MoE auxiliary loss is not added.
    """
    add_shaped_lm_head(_base_model(model))
    outputs = model(**inputs, shaped_lm_head=shaping, num_items_in_batch=num_items_in_batch)
    return (outputs.loss, outputs.stats) if return_stats else outputs.loss


def _check_dataset_columns(dataset, name: str, args, formatting_func) -> None:
    # SFTTrainer reaches a bare KeyError deep in tokenisation on such a dataset; say what it needs instead.
    columns = getattr(dataset, "column_names", None)
    if columns is None or formatting_func is not None:
        return
    if args is not None and (getattr(args, "dataset_kwargs", None) or {}).get("skip_prepare_dataset"):
        return
    text_field = getattr(args, "dataset_text_field", "text") if args is not None else "text"
    if {"input_ids", "messages", text_field} & set(columns) or {"prompt", "completion"} <= set(columns):
        return
    raise ValueError(
        f"The {name} dataset has columns {sorted(columns)}, none of which SFT can train on. It needs a text column "
        f"named by `dataset_text_field` (currently {text_field!r}), a conversational 'messages' column, 'prompt' and "
        "'completion' columns, or tokenized 'input_ids'. Rename a column, set `dataset_text_field` in the config, or "
        "pass a `formatting_func`."
    )


class ShapedSFTTrainer(SafeCheckpointsMixin, SFTTrainer):
    """[`~trl.SFTTrainer`] that minimises the rank-aware shaped loss of arXiv 2512.22955 (see METHOD.md).

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
        for name, dataset in {"train": bound.get("train_dataset"), **eval_datasets}.items():
            _check_dataset_columns(dataset, name, sft_args, formatting_func)
        super().__init__(*args, **kwargs)
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
        add_shaped_lm_head(_base_model(self.model))
        self._shaped_sums = {"train": {}, "eval": {}}

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
        outputs = model(**inputs, shaped_lm_head=self.shaping, num_items_in_batch=num_items_in_batch)
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
        # a batch with few scored tokens like a full one).
        keys = (*STAT_NAMES, "num_tokens")
        local = torch.stack(
            [torch.as_tensor(stats[k], dtype=torch.float64, device=self.accelerator.device) for k in keys]
        )
        total = self.accelerator.reduce(local, reduction="sum").tolist()
        sums = self._shaped_sums[mode]
        for key, value in zip(keys, total):
            sums[key] = sums.get(key, 0.0) + value

    def _count_train_tokens(self, inputs: dict) -> None:
        # As SFTTrainer: input tokens (padding excluded), or the packed row length under padding-free
        if "attention_mask" in inputs:
            local = inputs["attention_mask"].sum()
        else:
            local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
        self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // self._tp_size

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        sums, self._shaped_sums[mode] = self._shaped_sums[mode], {}
        if sums:
            n = max(sums.pop("num_tokens"), 1.0)
            means = {key: value / n for key, value in sums.items()}
            means["mean_token_accuracy"] = means.pop("top1_accuracy")
            means["perplexity"] = math.exp(min(means["nll"], 700.0))  # exp overflows float64 past ~709
            # SFTTrainer.log averages `_metrics`, prefixes eval keys and clears them: one value per key gives the mean
            for key, value in means.items():
                self._metrics[mode][key] = [value]
        super().log(logs, start_time)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, tagged `trl_shaped`, with the shaping settings in its metadata and text."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        from huggingface_hub import ModelCard

        path = Path(self.args.output_dir) / "README.md"
        card = ModelCard.load(path)
        settings = {
            name: getattr(self.shaping, name)
            for name in ("beta", "top_k", "head_reward", "tail_reward", "positive_form")
        }
        preset = getattr(self.args, "shaping_preset", None)
        card.data["trl_shaped"] = {"shaping_preset": preset, **settings}
        rows = "\n".join(f"| `{name}` | `{value}` |" for name, value in settings.items())
        card.text += (
            "\n## Shaped loss\n\nTrained with `trl_shaped`, the rank-aware reward-shaped next-token loss of "
            f"[arXiv:2512.22955](https://arxiv.org/abs/2512.22955) (preset: `{preset}`).\n\n"
            f"| setting | value |\n|---|---|\n{rows}\n"
        )
        card.save(path)
