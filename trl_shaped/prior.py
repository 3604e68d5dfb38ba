"""The stage-1 prior of `ShapedGRPOTrainer`: loading it, checking its vocabulary, running a PEFT policy as it.

How the trainer holds the prior (`PRIOR_KINDS`) is decided in `ShapedGRPOTrainer.__init__`; these are the pieces
that do not need a trainer.
"""

import contextlib
import os

import torch

from .compat import create_model_from_path, use_adapter

# How the prior is held (`ShapedGRPOTrainer.prior_kind`).
PRIOR_KINDS = ("none", "model", "adapters_disabled", "ref_adapter")


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
