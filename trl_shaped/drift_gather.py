"""The inputs of GRPO's drift diagnostics, gathered whole: both models' hidden states on the completions and both LM
heads, under whatever shards them.

`drift.drift_sums` is a pure function of final hidden states and LM heads. Getting those for the policy and the prior
happens outside a training forward, so every parameter they read must be gathered first: under DeepSpeed ZeRO-3 the
heads through TRL's `maybe_gather_lm_head_ctx`; under FSDP2 each backbone runs as the forward of its root FSDP unit
(`fsdp.through_root`) and a head still sharded after it is gathered whole (`fsdp.whole`). The prior is held as
`prior.choose_prior` decided (a frozen model, a `"ref"` adapter, or the policy with its adapters disabled), and
`prior.policy_and_prior` gives the module and context of each. `ShapedGRPOTrainer` calls `completion_drift_sums` from
its `compute_loss` hook.
"""

import torch
from accelerate.utils import extract_model_from_parallel

from .compat import maybe_gather_lm_head_ctx
from .drift import DRIFT_SUM_NAMES, HeadParams, drift_sums
from .fsdp import through_root, whole
from .lm_head import logit_transform
from .prior import policy_and_prior


@torch.no_grad()
def completion_drift_sums(model, prior_model, prior_kind: str, batch: dict, rows: int, top_k: int) -> torch.Tensor:
    """This process's `drift.DRIFT_SUM_NAMES` sums on the completion tokens of a generation batch (not yet reduced).

    Runs the policy and the prior on `rows` rows at a time and hands their final hidden states and LM heads to
    `drift.drift_sums`. Both run outside a training forward, so what they read is gathered first: under ZeRO-3 the
    heads by TRL's `maybe_gather_lm_head_ctx`; under FSDP2 each backbone runs as its root FSDP unit's forward
    (`fsdp.through_root`) and a head still sharded after it is gathered whole (`fsdp.whole`). Every process calls
    this with the same number of rows and enters every gather, whether it has scored tokens or not.

    Args:
        model: the policy as the trainer holds it (wrapped by DDP, DeepSpeed or FSDP2, or not).
        prior_model: the prior as the trainer holds it (`"model"` kind), else `None`.
        prior_kind (`str`): how the prior is held (`prior.choose_prior`).
        batch (`dict`): a generation batch (`prompt_ids`, `prompt_mask`, `completion_ids`, `completion_mask`, and
            `tool_mask` when tools ran).
        rows (`int`): rows per forward (the per-device train batch size).
        top_k (`int`): `diagnostics_top_k`.
    """
    policy, prior, prior_context = policy_and_prior(
        extract_model_from_parallel(model),
        prior_kind,
        None if prior_model is None else extract_model_from_parallel(prior_model),
    )
    # the adapter kinds run the prior inside the policy's own model
    prior_held = model if prior_model is None else prior_model
    completion_ids = batch["completion_ids"]
    mask = batch["completion_mask"] * batch.get("tool_mask", 1)
    input_ids = torch.cat([batch["prompt_ids"], completion_ids], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    width = completion_ids.size(1)
    sums = torch.zeros(len(DRIFT_SUM_NAMES), device=completion_ids.device)
    for start in range(0, input_ids.size(0), rows):
        chunk = slice(start, start + rows)
        scored = mask[chunk].bool()
        labels = completion_ids[chunk][scored]
        hidden_policy = _completion_hidden(model, policy, input_ids[chunk], attention_mask[chunk], width)[scored]
        with prior_context():
            hidden_prior = _completion_hidden(prior_held, prior, input_ids[chunk], attention_mask[chunk], width)
        sums += _gathered_drift_sums(policy, prior, prior_context, hidden_policy, hidden_prior[scored], labels, top_k)
    return sums


def _gathered_drift_sums(policy, prior, prior_context, hidden_policy, hidden_prior, labels, top_k) -> torch.Tensor:
    # Each head is resolved in its own model's context: under the prior's, a PEFT `modules_to_save` wrapper on the
    # head returns the prior's copy, not the policy's.
    policy_head = _head_params(policy)
    with prior_context():
        prior_head = _head_params(prior)
    # Every process enters the gathers (collectives under ZeRO-3 and FSDP2), whether it has scored tokens or not; the
    # chunk size is read from the gathered heads (a ZeRO-3 shard is empty).
    with maybe_gather_lm_head_ctx(policy_head.weight, policy_head.bias, prior_head.weight, prior_head.bias):
        policy_head, prior_head = (
            head._replace(weight=whole(head.weight), bias=whole(head.bias)) for head in (policy_head, prior_head)
        )
        return drift_sums(hidden_policy, hidden_prior, labels, policy_head, prior_head, top_k)


def _completion_hidden(held, model, input_ids, attention_mask, width):
    # Final hidden states at the positions that predict the completion tokens (as TRL's fused head scores them). The
    # backbone runs inside the forward of the model as held (`held`), so that FSDP2's root gathers what it holds.
    outputs = through_root(held, model.base_model, input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return outputs.last_hidden_state[:, -width - 1 : -1]


def _head_params(model) -> HeadParams:
    # A LoRA layer on the head: its base layer's parameters (the adapter is bypassed; LoRA target modules rarely
    # include the head). A `modules_to_save` wrapper: the copy of the active adapter (or the original when disabled).
    head = model.get_output_embeddings()
    base = getattr(head, "base_layer", head)
    return HeadParams(base.weight, base.bias, *logit_transform(model.config.get_text_config()))
