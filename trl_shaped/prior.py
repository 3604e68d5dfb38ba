"""The stage-1 prior of `ShapedGRPOTrainer`, its whole lifecycle: how it is held (`choose_prior`), loaded, checked
against the policy's vocabulary, prepared frozen beside the policy (`prepare_frozen_prior`), described
(`describe_references`) and run (`policy_and_prior`, `frozen_adapter`).

How it is held (`prior_kind`), as cheaply as TRL holds its reference:

- `"none"`: nothing reads it (`beta = 0` and `diagnostics_steps = 0`);
- `"adapters_disabled"`: a new LoRA adapter and no prior path: the base model with the adapters disabled, no copy;
- `"ref_adapter"`: a PEFT policy carrying a stage-1 adapter and no prior path: a frozen copy of that adapter named
  `REF_ADAPTER` on the shared base (TRL's own reference for such a policy);
- `"model"`: otherwise, a full frozen copy of the stage-1 model.
"""

import contextlib
import copy
import os

import torch
from accelerate.utils import is_peft_model
from transformers.utils import logging

from .compat import (
    REF_ADAPTER,
    add_fused_lm_head,
    add_reference_adapter,
    create_model_from_path,
    disable_dropout_in_model,
    prepare_deepspeed,
    prepare_fsdp,
    use_adapter,
)
from .drift import DRIFT_STATS

logger = logging.get_logger(__name__)


def is_adapter_dir(path) -> bool:
    return isinstance(path, str) and os.path.isfile(os.path.join(path, "adapter_config.json"))


def load_causal_lm(path: str, merge_adapter: bool, **kwargs):
    """A causal LM from a full checkpoint, or from a LoRA adapter directory (trainable, or merged when asked)."""
    if is_adapter_dir(path):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=not merge_adapter, **kwargs)
        return model.merge_and_unload() if merge_adapter else model
    return create_model_from_path(path, **kwargs)


def vocab_rows(model) -> int:
    """Rows of a model's input embedding (the real count under ZeRO-3, where the local shard is empty)."""
    weight = model.get_input_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def check_vocabularies(policy_rows: int, tokenizer_size: int, prior_rows: int | None) -> None:
    """Raise a ValueError naming what differs when the prior, the policy and the tokenizer do not share a vocabulary.

    Args:
        policy_rows (`int`): rows of the policy's embedding.
        tokenizer_size (`int`): `len(tokenizer)`; it may be smaller than the embedding (padded vocabularies).
        prior_rows (`int`, *optional*): rows of the prior's embedding; `None` when the prior shares the policy's.
    """
    if tokenizer_size > policy_rows:
        raise ValueError(
            f"processing_class has {tokenizer_size} tokens, more than the policy's embedding ({policy_rows} rows): "
            "sampled ids would index past it. Resize the model's embeddings (model.resize_token_embeddings) or use "
            "the tokenizer it was trained with."
        )
    if prior_rows is not None and prior_rows != policy_rows:
        which = "larger" if prior_rows > policy_rows else "smaller"
        raise ValueError(
            f"The prior (prior_model_name_or_path) has a {which} vocabulary than the policy: {prior_rows} embedding "
            f"rows vs {policy_rows}. KL and drift diagnostics compare the two distributions token by token; use a "
            "prior from the same stage-1 run (same tokenizer and embedding size) as the policy."
        )


@contextlib.contextmanager
def frozen_adapter(policy, adapter_name: str | None):
    """Run the PeftModel `policy` under `adapter_name` (None: adapters disabled) without unfreezing that adapter
    (PEFT's `set_adapter` marks the adapter it activates trainable)."""
    try:
        with torch.no_grad(), use_adapter(policy, adapter_name=adapter_name):
            yield
    finally:
        if adapter_name is not None:
            for name, param in policy.named_parameters():
                if f".{adapter_name}." in name:
                    param.requires_grad_(False)


def choose_prior(args, model, new_adapter: bool, policy_path: str | None):
    """How the prior is held, decided (and copied where needed) before TRL touches the policy's starting weights.

    Args:
        args ([`ShapedGRPOConfig`]): `beta`, `diagnostics_steps`, `prior_model_name_or_path`.
        model: the policy as passed (a path, a model, or a PeftModel; an adapter directory already loaded).
        new_adapter (`bool`): a `peft_config` is given (TRL adds a new LoRA adapter).
        policy_path (`str`, *optional*): the policy's path when `model` was given as one.

    Returns:
        `(prior_kind, prior_path, prior)`: the kind, the path to load a `"model"` prior from after TRL's set-up, and
        a copy of a policy instance (`"model"` without a path). For `"ref_adapter"` the frozen adapter copy is added
        to `model` here.
    """
    prior_path = args.prior_model_name_or_path
    if args.beta == 0.0 and args.diagnostics_steps == 0:
        if prior_path is not None:
            logger.warning("prior_model_name_or_path is not loaded: neither beta > 0 nor diagnostics_steps > 0")
        return "none", None, None
    if prior_path is not None:
        return "model", prior_path, None
    if new_adapter:
        return "adapters_disabled", None, None
    if not isinstance(model, str) and is_peft_model(model):
        add_reference_adapter(model)
        return "ref_adapter", None, None
    if policy_path is not None:
        return "model", policy_path, None
    return "model", None, copy.deepcopy(model)


def prior_init_kwargs(args, policy) -> dict:
    """`from_pretrained` keywords of the prior, as TRL loads its reference model: the policy's dtype and attention, no
    device map when distributed."""
    kwargs = dict(args.model_init_kwargs or {})
    if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
        kwargs["device_map"] = None
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    kwargs.setdefault("dtype", policy.dtype)
    kwargs.setdefault("attn_implementation", policy.config._attn_implementation)
    return kwargs


def prepare_frozen_prior(prior, trainer):
    """Freeze `prior` and prepare it beside the policy as TRL prepares its reference (DeepSpeed, FSDP or plain).

    Args:
        prior ([`~transformers.PreTrainedModel`]): the loaded prior.
        trainer ([`ShapedGRPOTrainer`]): after `GRPOTrainer.__init__` (its accelerator, args and temperature).
    """
    prior.requires_grad_(False)
    prior.eval()
    if trainer.args.disable_dropout:
        disable_dropout_in_model(prior)
    # TRL scores its reference model with `fused_lm_head=True`
    add_fused_lm_head(prior, temperature=trainer.temperature, cast_lm_head_to_fp32=trainer.args.cast_lm_head_to_fp32)
    if trainer.is_deepspeed_enabled:
        # Before `train()` the DeepSpeed config may hold a train_batch_size computed for one accumulation step,
        # which DeepSpeed rejects when gradient_accumulation_steps > 1. The prior never trains, so TRL's
        # preparation runs on a copy without the batch fields and DeepSpeed derives them.
        plugin = trainer.accelerator.state.deepspeed_plugin
        config = plugin.deepspeed_config
        plugin.deepspeed_config = {k: v for k, v in config.items() if k not in ("train_batch_size",)}
        try:
            return prepare_deepspeed(prior, trainer.accelerator)
        finally:
            plugin.deepspeed_config = config
    if trainer.is_fsdp_enabled:
        return prepare_fsdp(prior, trainer.accelerator)
    return trainer.accelerator.prepare_model(prior, evaluation_mode=True)


def describe_references(prior_kind: str, args) -> dict[str, str]:
    """Which model each logged comparison metric compares with (`ShapedGRPOTrainer.reference_of_metric`).

    Args:
        prior_kind (`str`): how the prior is held.
        args ([`ShapedGRPOConfig`]): `beta`, `sync_ref_model` (and its steps and alpha), `diagnostics_steps`.
    """
    prior = {
        "none": None,
        "model": "the stage-1 prior (a frozen copy)",
        "adapters_disabled": "the stage-1 prior (the base model, adapters disabled)",
        "ref_adapter": f"the stage-1 prior (frozen adapter {REF_ADAPTER!r} on the shared base)",
    }[prior_kind]
    described = {}
    if args.beta != 0.0:
        described["kl"] = (
            f"TRL's reference, synced towards the policy every {args.ref_model_sync_steps} steps "
            f"(mixup alpha {args.ref_model_mixup_alpha})"
            if args.sync_ref_model
            else prior
        )
    if args.diagnostics_steps > 0:
        for name in ("kl_to_prior", *(f"prior_{s}" for s in DRIFT_STATS)):
            described[name] = prior
    return described


def policy_and_prior(policy, prior_kind: str, prior_model):
    """(policy causal LM, prior causal LM, context manager to enter while the prior runs).

    Args:
        policy: the unwrapped policy (a PeftModel for the adapter kinds).
        prior_kind (`str`): how the prior is held.
        prior_model: the unwrapped prior model (`"model"` kind), else None.
    """
    if prior_kind in ("adapters_disabled", "ref_adapter"):  # the prior is the policy's own base
        base = policy.get_base_model()
        adapter = REF_ADAPTER if prior_kind == "ref_adapter" else None
        return base, base, lambda: frozen_adapter(policy, adapter)
    if prior_model is None:
        raise RuntimeError("no prior was loaded (beta = 0 and diagnostics_steps = 0): nothing to compare with")
    policy = policy.get_base_model() if is_peft_model(policy) else policy
    return policy, prior_model, torch.no_grad
