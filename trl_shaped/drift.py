"""Drift statistics of `ShapedGRPOTrainer`: how far the policy moved from its stage-1 prior, on sampled tokens.

A pure function of the two models' final hidden states at the scored positions and their LM heads, tested without a
trainer. Like the fused loss it walks over chunks of tokens, one float32 (chunk x vocabulary) logits buffer per model
at a time, and its per-row sums are `loss_core.row_terms` and `loss_core.stats_from_terms`:

    KL(p || q) = sum_a p_a log p_a - (unnorm_p . shifted_q) / norm_p + log norm_q

reuses both models' softmax parts (`softmax_parts`), so each chunk costs one exp per model.
"""

from typing import NamedTuple

import torch

from .loss_core import (
    chunk_logits,
    default_chunk_size,
    logits_buffers,
    row_dot,
    row_terms,
    softmax_parts,
    stats_from_terms,
    topk_indices,
)

# Statistics logged for both models, as `policy_<name>` and `prior_<name>`.
DRIFT_STATS = ("entropy", "topk_entropy", "topk_mass", "nll")
# Layout of the tensor `drift_sums` returns: sums over tokens, then the token count.
DRIFT_SUM_NAMES = (
    *(f"policy_{name}" for name in DRIFT_STATS),
    *(f"prior_{name}" for name in DRIFT_STATS),
    "kl_to_prior",
    "num_tokens",
)


class HeadParams(NamedTuple):
    """An LM head as the logits of one chunk need it: `(hidden @ weight.T + bias) * logit_scale`, then the softcap."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    logit_scale: float = 1.0
    softcap: float | None = None


def drift_sums(
    hidden_policy: torch.Tensor,
    hidden_prior: torch.Tensor,
    labels: torch.Tensor,
    policy_head: HeadParams,
    prior_head: HeadParams,
    top_k: int,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Sums over tokens of both models' `DRIFT_STATS` and of KL(policy || prior), and the token count.

    Args:
        hidden_policy, hidden_prior (`torch.Tensor`): (n, H) final hidden states of each model at the positions that
            predict `labels`.
        labels (`torch.Tensor`): (n,) the sampled token ids; n may be 0 (all sums are then 0).
        policy_head, prior_head ([`HeadParams`]): the heads, whole (gathered under ZeRO-3: the chunk size is read
            from their vocabulary).
        top_k (`int`): size of K_t for `topk_entropy` and `topk_mass`.
        chunk_size (`int`, *optional*): tokens per chunk; by default `default_chunk_size` of the vocabulary.

    Returns:
        `torch.Tensor`: float32 (len(DRIFT_SUM_NAMES),) laid out as `DRIFT_SUM_NAMES`.
    """
    num_tokens = labels.numel()
    total = torch.zeros(len(DRIFT_SUM_NAMES), device=labels.device)
    if num_tokens == 0:
        return total
    vocab = policy_head.weight.shape[0]
    step = chunk_size or default_chunk_size(num_tokens, vocab)
    buffers = [
        logits_buffers(min(step, num_tokens), vocab, head.weight, labels.device) for head in (policy_head, prior_head)
    ]
    for start in range(0, num_tokens, step):
        part = slice(start, start + step)
        sampled = labels[part]
        parts, stats = [], []
        for hidden, head, (logits_out, matmul_out) in zip(
            (hidden_policy, hidden_prior), (policy_head, prior_head), buffers, strict=True
        ):
            h = hidden[part].to(head.weight.dtype)
            size = h.shape[0]
            logits = chunk_logits(
                h, head.weight, head.bias, head.logit_scale, head.softcap, logits_out[:size],
                None if matmul_out is None else matmul_out[:size],
            )  # fmt: skip
            shifted, unnorm, norm = softmax_parts(logits, inplace=True)
            terms = row_terms(shifted, unnorm, norm, sampled, topk_indices(shifted, top_k))
            parts.append((shifted, unnorm, norm, terms))
            stats.append(stats_from_terms(terms))
        (_, unnorm_p, norm_p, terms_p), (shifted_q, _, norm_q, _) = parts
        kl = terms_p.plogp - row_dot(unnorm_p, shifted_q) / norm_p.squeeze(-1) + norm_q.log().squeeze(-1)
        values = [stats[0][name].sum() for name in DRIFT_STATS] + [stats[1][name].sum() for name in DRIFT_STATS]
        total += torch.stack([*values, kl.sum(), total.new_tensor(float(sampled.numel()))])
    return total


def drift_means(sums: torch.Tensor) -> dict[str, float]:
    """The logged metrics from `drift_sums` (summed over micro-batches and processes): means over tokens."""
    count = sums[-1].clamp(min=1.0)
    return {name: (sums[i] / count).item() for i, name in enumerate(DRIFT_SUM_NAMES[:-1])}
