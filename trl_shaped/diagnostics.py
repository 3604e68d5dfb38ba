"""Distribution diagnostics of METHOD.md section 5, from full logits or from one chunk of the fused loss.

`row_terms` is the single implementation of the per-position sums (log p_y, sum p log p over the vocabulary and
over K_t, the mass of K_t, ...). `distribution_stats` uses it on full logits; `fused_linear_shaped_loss` uses it on
each chunk of logits, both for its diagnostics and for the value of the shaped loss, so the two cannot drift.
"""

import torch

from .loss import REDUCTIONS, check_labels, check_reduction, softmax_parts, topk_indices

STAT_NAMES = (
    "entropy",
    "topk_entropy",
    "topk_mass",
    "tail_mass",
    "target_prob",
    "target_in_topk",
    "top1_accuracy",
    "nll",
)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Row-wise dot product as a batched matmul: one pass, no (n, V) temporary (vecdot and (a * b).sum make one).
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def row_terms(
    shifted: torch.Tensor,
    unnorm: torch.Tensor,
    norm: torch.Tensor,
    labels: torch.Tensor,
    head_ids: torch.Tensor | None,
    with_entropy: bool = True,
    with_top1: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-row sums that the loss value and the diagnostics are made of.

    Args:
        shifted, unnorm, norm: the output of `loss.softmax_parts` for (n, V) logits (p = unnorm / norm).
        labels (`torch.Tensor`): (n,) ground-truth ids, all valid.
        head_ids (`torch.Tensor` or `None`): (n, k) ids of K_t from `loss.topk_indices`; `None` computes only
            "logp_y" and "p_y".
        with_entropy (`bool`): also compute "plogp" (one pass over the vocabulary).
        with_top1 (`bool`): also compute "top1" (an argmax over the vocabulary).

    Returns:
        dict of (n,) tensors: "logp_y", "p_y"; with head ids also "head_p" (n, k: p over K_t), "topk_mass"
        (sum over K_t of p), "topk_plogp" (sum over K_t of p log p), "target_in_topk" (0/1); "plogp"
        (sum_a p_a log p_a) and "top1" (0/1) when asked.
    """
    rows = labels.unsqueeze(-1)
    log_norm = norm.log().squeeze(-1)
    inv_norm = norm.reciprocal()
    terms = {"logp_y": shifted.gather(-1, rows).squeeze(-1) - log_norm}
    terms["p_y"] = unnorm.gather(-1, rows).squeeze(-1) * inv_norm.squeeze(-1)
    if with_entropy:
        # sum p = 1, so sum p log p = (unnorm . shifted) / norm - log norm.
        terms["plogp"] = _row_dot(unnorm, shifted) * inv_norm.squeeze(-1) - log_norm
    if head_ids is None:
        return terms
    # K_t has k entries per row: everything about it is a gather of (n, k) values, not a pass over the vocabulary.
    head_p = unnorm.gather(-1, head_ids) * inv_norm
    terms["head_p"] = head_p
    terms["topk_mass"] = head_p.sum(dim=-1)
    terms["topk_plogp"] = (head_p * shifted.gather(-1, head_ids)).sum(dim=-1) - terms["topk_mass"] * log_norm
    terms["target_in_topk"] = (head_ids == rows).any(dim=-1).to(shifted.dtype)
    if with_top1:
        # argmax returns the first maximum: the same lower-id rule as the ties of K_t.
        terms["top1"] = (shifted.argmax(dim=-1) == labels).to(shifted.dtype)
    return terms


def stats_from_terms(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-row diagnostics of METHOD.md section 5 from `row_terms` (computed with head ids, entropy, top1)."""
    mass = terms["topk_mass"]
    return {
        "entropy": -terms["plogp"],
        # Entropy of p restricted to K_t and renormalised: log M - (1/M) sum_K p log p. M >= max p > 0.
        "topk_entropy": torch.log(mass) - terms["topk_plogp"] / mass,
        "topk_mass": mass,
        "tail_mass": (1.0 - mass).clamp_min(0.0),
        "target_prob": terms["p_y"],
        "target_in_topk": terms["target_in_topk"],
        "top1_accuracy": terms["top1"],
        "nll": -terms["logp_y"],
    }


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
        logits (`torch.Tensor`): (..., V) logits aligned with `labels`.
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
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
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
