"""Distribution diagnostics of docs/method.md (entropy, top-k mass, ...) at the scored positions of full logits.

The per-row sums are `loss_core.row_terms` and `loss_core.stats_from_terms`, the same functions the fused loss runs
on each chunk of logits for its diagnostics and its loss value, so the two cannot drift.
"""

import torch

from .loss_core import (
    REDUCTIONS,
    STAT_NAMES,
    check_labels,
    check_reduction,
    row_terms,
    softmax_parts,
    stats_from_terms,
    topk_indices,
)
from .validation import check_int

__all__ = ["STAT_NAMES", "distribution_stats"]


def distribution_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    top_k: int = 100,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """Diagnostics of the predicted next-token distributions at the scored positions (detached, float32).

    Args:
        logits (`torch.Tensor`): (..., V) logits aligned with `labels`; -inf (masked tokens) allowed, they count
            as p = 0 (0 * log 0 = 0 in the entropy).
        labels (`torch.Tensor`): (...) ground-truth ids, `ignore_index` where a position is not scored.
        top_k (`int`): size of K_t for topk_entropy, topk_mass, tail_mass and target_in_topk.
        ignore_index (`int`): label value of positions that are not scored.
        reduction (`str`): "mean" over valid positions (0 when there are none), "sum" (adds "num_tokens"), or
            "none" (per-position values shaped like `labels`, 0 where ignored).

    Returns:
        dict with keys entropy, topk_entropy, topk_mass, tail_mass, target_prob, target_in_topk, top1_accuracy, nll
        (and num_tokens for reduction="sum").
    """
    check_reduction(reduction, REDUCTIONS)
    top_k = check_int("top_k", top_k, minimum=1)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} plus a vocabulary axis")
    vocab = logits.shape[-1]
    flat_labels = labels.reshape(-1)
    with torch.no_grad():
        valid = check_labels(flat_labels, vocab, ignore_index)
        rows = valid.nonzero().squeeze(-1)
        z = logits.reshape(-1, vocab)[rows].float()
        head_ids = topk_indices(z, top_k)
        per_row = stats_from_terms(row_terms(*softmax_parts(z), flat_labels[rows], head_ids))
        if reduction == "none":
            return {
                k: v.new_zeros(flat_labels.shape).index_put((rows,), v).reshape(labels.shape)
                for k, v in per_row.items()
            }
        sums = {k: v.sum() for k, v in per_row.items()}
        if reduction == "sum":
            sums["num_tokens"] = torch.tensor(float(rows.numel()), device=z.device)
            return sums
        count = max(rows.numel(), 1)
        return {k: v / count for k, v in sums.items()}
