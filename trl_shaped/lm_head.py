"""The shaped loss as a causal LM's head: patch a model so that its forward returns the shaped loss, never the logits.

The data flow mirrors TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`), which TRL also keeps apart from its
trainer: `add_shaped_lm_head` patches the model's forward so that `model(**batch, shaped_lm_head=ShapingConfig(...))`
runs the backbone and then the chunked `fused_linear_shaped_loss` on the final hidden states and the LM-head weight.
The loss runs *as the LM head's own forward*: under DeepSpeed ZeRO-3 a module's parameters are gathered by its own
forward hook and gathered again for its backward, so the sharded head weight is whole while the loss reads it and its
gradient lands on the sharded parameter exactly as it does for the model's native head. `shaped_causal_lm_loss`
exposes the same path to any trainer (ShapedSFTTrainer's loss, the GRPO auxiliary loss).
"""

import functools
import types
from dataclasses import dataclass

import torch
import transformers
from accelerate.utils import extract_model_from_parallel, is_peft_model
from transformers.utils import ModelOutput

from .fused_loss import fused_linear_shaped_loss
from .shaping import ShapingConfig
from .validation import check_real


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


def _config_number(text_config, name: str, value, **bounds) -> float:
    # A bool is an int to Python: `final_logit_softcapping=True` would otherwise cap the logits at +-1.0 silently.
    described = f"{name} in the model config (model_type {getattr(text_config, 'model_type', None)!r})"
    return check_real(described, value, **bounds)


def logit_transform(text_config) -> tuple[float, float | None]:
    """The `(logit_scale, final_logit_softcapping)` a causal LM applies to its logits, read from its text config.

    The same config fields TRL's `add_fused_lm_head` reads (inline there, so there is no function to reuse): a
    multiplier under one of several names (`logit_scale`, `output_multiplier`, `lm_head_multiplier`), or
    `logits_scaling` (a divisor, a multiplier for HyperCLOVA X), then the final softcap c of tanh(z / c) * c.

    Args:
        text_config ([`~transformers.PretrainedConfig`]): the model's text config (`config.get_text_config()`).

    Returns:
        `tuple[float, float | None]`: the multiplier (1.0 when none is set) and the softcap (`None` when off).

    Raises:
        `ValueError`: a field that is not a finite number (a bool included), or a softcap that is not > 0.
    """
    scale, name = None, None
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        scale = getattr(text_config, name, None)
        if scale is not None:
            scale = _config_number(text_config, name, scale)
            break
    if scale is None and getattr(text_config, "logits_scaling", None) is not None:
        divisor = _config_number(text_config, "logits_scaling", text_config.logits_scaling)
        if divisor == 0 and text_config.model_type != "hyperclovax":
            raise ValueError("the model config's logits_scaling divides the logits, so it must not be 0")
        scale = divisor if text_config.model_type == "hyperclovax" else 1 / divisor
    softcap = getattr(text_config, "final_logit_softcapping", None)
    if softcap is not None:
        softcap = _config_number(
            text_config,
            "final_logit_softcapping",
            softcap,
            minimum=0,
            open_minimum=True,
            allowed="None (no softcap) or a finite real number > 0",
        )
    return (1.0 if scale is None else scale), softcap


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


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    model = extract_model_from_parallel(model)  # DDP, DeepSpeed engine, FSDP, torch.compile
    return model.get_base_model() if is_peft_model(model) else model


def add_shaped_lm_head(model: torch.nn.Module) -> None:
    """Patch `model` so that `model(..., labels=labels, shaped_lm_head=config)` returns a [`ShapedCausalLMOutput`].

    With `shaped_lm_head=None` (the default) the forward is the previous one, so generation and TRL's own
    `fused_lm_head=True` path are unchanged. A wrapped model (PEFT, DDP, a DeepSpeed engine, `torch.compile`) is
    unwrapped to the causal LM, which is patched; the wrappers pass the keyword arguments through. The backbone and
    the LM head are looked up on every call, since PEFT and DeepSpeed replace them after patching. Calling it twice is
    a no-op.

    Args:
        model ([`~transformers.PreTrainedModel`] or a wrapper of it): a causal language model with
            `get_output_embeddings()` and a backbone under `base_model_prefix`.

    The patched forward takes, besides the model's inputs: `labels` (`(B, T)`, shifted inside like the model's own
    loss) or `shift_labels` (already aligned), `num_items_in_batch` (the normaliser, as in TRL), `shaped_lm_head`
    (a [`ShapingConfig`]) and `stats_groups` (`(B, T)` integers aligned with `labels`: per-group stats sums, see
    `fused_linear_shaped_loss`).
    """
    model: transformers.PreTrainedModel = _base_model(model)
    if getattr(model, "_trl_shaped_lm_head", False):
        return
    original_forward = model.forward
    text_config = model.config.get_text_config()
    logit_scale, final_logit_softcapping = logit_transform(text_config)  # a bad config fails here, before any step

    @functools.wraps(type(model).forward)
    def _forward(
        self, *args, shaped_lm_head=None, labels=None, shift_labels=None, num_items_in_batch=None, stats_groups=None,
        **kwargs,
    ):  # fmt: skip
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
            stats_groups = None if stats_groups is None else stats_groups[:, 1:]
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
            **({} if stats_groups is None else {"stats_groups": stats_groups.to(head.weight.device)}),
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


def check_shaped_output(outputs) -> ShapedCausalLMOutput:
    """`outputs` when the shaped loss produced it; a RuntimeError when the model's forward was replaced after
    [`add_shaped_lm_head`] by one that ignores `shaped_lm_head` (Liger's `fused_linear_cross_entropy` does that: its
    forward computes its own cross-entropy), instead of training silently with another loss."""
    if not isinstance(outputs, ShapedCausalLMOutput):
        raise RuntimeError(
            f"the model's forward returned a {type(outputs).__name__}, not the shaped loss: it was replaced after "
            "add_shaped_lm_head, e.g. by Liger's fused_linear_cross_entropy (use_liger_kernel=True with "
            'liger_kernel_config={"fused_linear_cross_entropy": True}, or a liger_kernel apply_* call on the model). '
            "Leave fused_linear_cross_entropy off: Liger's other kernels work with the shaped loss."
        )
    return outputs


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
    add_shaped_lm_head(model)
    outputs = check_shaped_output(model(**inputs, shaped_lm_head=shaping, num_items_in_batch=num_items_in_batch))
    return (outputs.loss, outputs.stats) if return_stats else outputs.loss
