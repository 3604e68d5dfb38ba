"""Distribution diagnostics of METHOD.md section 5, from full logits or from one chunk of the fused loss.

`row_terms` is the single implementation of the per-position sums (log p_y, sum p log p over the vocabulary and
over K_t, the mass of K_t, ...). `distribution_stats` uses it on full logits; `fused_linear_shaped_loss` uses it on
each chunk of logits, both for its diagnostics and for the value of the shaped loss, so the two cannot drift.
"""

import torch

from .loss import REDUCTIONS, check_labels, check_reduction, softmax_parts, topk_mask

STAT_NAMES = ("entropy", "topk_entropy", "topk_mass", "tail_mass", "target_prob", "target_in_topk", "top1_accuracy", "nll")


def row_terms(
    shifted: torch.Tensor,
    probs: torch.Tensor,
    log_norm: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    with_top1: bool = True,
) -> dict[str, torch.Tensor]:
    """Per-row float32 sums that the loss value and the diagnostics are made of.

    Args:
        shifted, probs, log_norm: the output of `loss.softmax_parts` for (n, V) logits (log p = shifted - log_norm).
        labels (`torch.Tensor`): (n,) ground-truth ids, all valid.
        mask (`torch.Tensor` or `None`): (n, V) boolean mask of K_t; `None` computes only "logp_y".
        with_top1 (`bool`): also compute "top1" (needs an argmax over the vocabulary).

    Returns:
        dict of (n,) tensors: "logp_y"; with a mask also "plogp" (sum_a p_a log p_a), "topk_mass" (sum over K_t of p),
        "topk_plogp" (sum over K_t of p log p), "target_in_topk" (0/1), and "top1" (0/1) when asked.
    """
    rows = labels.unsqueeze(-1)
    log_norm = log_norm.squeeze(-1)
    terms = {"logp_y": shifted.gather(-1, rows).squeeze(-1) - log_norm}
    if mask is None:
        return terms
    # sum p = 1, so sum p log p = sum p * shifted - log_norm; the shifted logits are <= 0, so p * shifted is 0
    # (not 0 * inf) where p underflows, which keeps +-1e4 logits finite.
    terms["plogp"] = torch.linalg.vecdot(probs, shifted) - log_norm
    head_probs = probs.where(mask, 0.0)
    terms["topk_mass"] = head_probs.sum(dim=-1)
    terms["topk_plogp"] = torch.linalg.vecdot(head_probs, shifted) - terms["topk_mass"] * log_norm
    terms["target_in_topk"] = mask.gather(-1, rows).squeeze(-1).float()
    if with_top1:
        # argmax returns the first maximum: the same lower-index rule as the ties of K_t.
        terms["top1"] = (shifted.argmax(dim=-1) == labels).float()
    return terms


def stats_from_terms(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-row diagnostics of METHOD.md section 5 from `row_terms` (computed with a mask and top1)."""
    mass = terms["topk_mass"]
    return {
        "entropy": -terms["plogp"],
        # Entropy of p restricted to K_t and renormalised: log M - (1/M) sum_K p log p. M >= max p > 0.
        "topk_entropy": torch.log(mass) - terms["topk_plogp"] / mass,
        "topk_mass": mass,
        "tail_mass": (1.0 - mass).clamp_min(0.0),
        "target_prob": terms["logp_y"].exp(),
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
        mask = topk_mask(z, top_k)
        per_row = stats_from_terms(row_terms(*softmax_parts(z), flat_labels[rows], mask))
        if reduction == "none":
            return {k: v.new_zeros(flat_labels.shape).index_put((rows,), v).reshape(labels.shape) for k, v in per_row.items()}
        sums = {k: v.sum() for k, v in per_row.items()}
        if reduction == "sum":
            sums["num_tokens"] = torch.tensor(float(rows.numel()), device=z.device)
            return sums
        count = max(rows.numel(), 1)
        return {k: v / count for k, v in sums.items()}
