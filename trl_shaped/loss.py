"""The rank-aware reward-shaped next-token loss on full logits: the readable reference of docs/method.md.

For each scored position with logits z, p = softmax(z) and ground truth y, the detached weights are

    w_y = p_y ** (1 - (1 - p_y) ** beta)        (positive_form="power")
    w_y = (1 - p_y) ** beta                     (positive_form="linear")
    w_a = p_a * head_reward   for a != y in K_t  (K_t: the top_k most probable tokens)
    w_a = p_a * tail_reward   for a != y not in K_t

and the loss is l = -sum_a sg(w_a) log p_a, whose logit gradient is -(w - p * sum_a w_a). At the defaults
w = onehot(y), so l = -log p_y and the gradient is the cross-entropy's.

The shared pieces (softmax parts, K_t, the positive weight, label checks, reduction) live in `loss_core`, which the
chunked `fused_linear_shaped_loss` and `distribution_stats` use too. `shaped_loss`
itself stays the literal formula (dense weights, autograd through log_softmax), so that the tests compare the
chunked closed forms against it.

Decisions (the paper leaves them open; see `loss_core` for each):
    * Ties at the k-th place: K_t is ranked by the float32 logits; among tokens whose logit equals the k-th largest,
      the lower token ids enter K_t first. K_t always holds exactly min(k, V) tokens; `top_k >= V` makes every
      negative token a head token.
    * beta >= -1 (`MIN_BETA`): why, and the bounds it gives, in `ShapingConfig`'s docstring. In the linear form
      1 - p_y is floored at `ONE_MINUS_P_FLOOR` before it is raised to a negative beta; the power form takes its
      limits at p_y in {0, 1}.
    * Masked tokens: a -inf logit of a non-target token contributes nothing (finite loss and gradient, like
      F.cross_entropy); a -inf target logit gives an infinite loss and a finite gradient, as F.cross_entropy does.
"""

import math

import torch
import torch.nn.functional as F

from .loss_core import (
    check_labels,
    check_num_items,
    check_reduction,
    compute_dtype,
    positive_weight,
    reduce_loss,
    topk_indices,
)
from .shaping import ShapingConfig, resolve_shaping

__all__ = ["shaped_loss", "shaped_weights"]


def shaped_weights(
    logits: torch.Tensor, labels: torch.Tensor, config: ShapingConfig, log_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """The dense detached weights w (n, V) of docs/method.md for valid rows.

    Args:
        logits (`torch.Tensor`): (n, V) logits of valid positions (no ignored labels); K_t is ranked on them.
        labels (`torch.Tensor`): (n,) ground-truth ids in [0, V).
        config (`ShapingConfig`): the shaping knobs.
        log_probs (`torch.Tensor`, *optional*): log_softmax(logits) when the caller already has it (saves a buffer).
    """
    with torch.no_grad():
        logits = logits.to(compute_dtype(logits.dtype))
        log_probs = F.log_softmax(logits, dim=-1) if log_probs is None else log_probs.detach()
        rows = labels.unsqueeze(-1)
        if config.needs_topk:
            # tail_reward * p everywhere, then head_reward * p on the k ids of K_t.
            head_ids = topk_indices(logits, config.top_k)
            weights = log_probs.exp()
            head_weights = weights.gather(-1, head_ids).mul_(config.head_reward)
            weights.mul_(config.tail_reward).scatter_(-1, head_ids, head_weights)
        else:
            weights = torch.zeros_like(logits)
        weights.scatter_(-1, rows, positive_weight(log_probs.gather(-1, rows), config))
    return weights


def shaped_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float = 0.0,
    top_k: int = 100,
    head_reward: float = 0.0,
    tail_reward: float = 0.0,
    positive_form: str = "power",
    ignore_index: int = -100,
    num_items_in_batch=None,
    reduction: str = "mean",
    config: ShapingConfig | None = None,
) -> torch.Tensor:
    """Rank-aware reward-shaped next-token loss on full logits (float32 inside whatever the input dtype).

    Args:
        logits (`torch.Tensor`): (..., V) logits; `logits[..., t, :]` scores `labels[..., t]` (already shifted).
        labels (`torch.Tensor`): (...) token ids, `ignore_index` where a position is not scored.
        beta, top_k, head_reward, tail_reward, positive_form: the shaping knobs (see `ShapingConfig`).
        ignore_index (`int`): label value of positions that are not scored.
        num_items_in_batch (`int`, `float` or `torch.Tensor`, *optional*): divisor of the "mean" reduction instead of
            the number of valid positions (what transformers/TRL pass under gradient accumulation). Must be > 0; 0 is
            accepted only when no position is scored (the loss is then 0).
        reduction (`str`): "mean", "sum" or "none" (per-position losses shaped like `labels`, 0 where ignored).
        config (`ShapingConfig`, *optional*): the shaping knobs as one object, instead of the loose arguments.

    Returns:
        A float32 tensor (float64 for float64 logits): the loss (a scalar, or shaped like `labels` for
        reduction="none").
    """
    config = resolve_shaping(
        config, beta=beta, top_k=top_k, head_reward=head_reward, tail_reward=tail_reward, positive_form=positive_form
    )
    check_reduction(reduction)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} plus a vocabulary axis")
    vocab = logits.shape[-1]
    flat_logits, flat_labels = logits.reshape(-1, vocab), labels.reshape(-1)
    valid = check_labels(flat_labels, vocab, ignore_index)
    rows = valid.nonzero().squeeze(-1)
    num_items_in_batch = check_num_items(num_items_in_batch, rows.numel())
    # Only valid rows enter the maths, so ignored positions (padding, prompts) cost nothing and cannot make NaN.
    valid_logits = flat_logits[rows].to(compute_dtype(logits.dtype))
    log_probs = F.log_softmax(valid_logits, dim=-1)
    weights = shaped_weights(valid_logits, flat_labels[rows], config, log_probs=log_probs)
    terms = weights * log_probs
    # A masked (-inf) token has w = 0 and log p = -inf: its term is 0, not NaN. Only then is it rewritten (a
    # reduction finds out without an (n, V) temporary); the other terms are untouched, so the defaults stay
    # bit-exact with F.cross_entropy, and unmasked logits pay no extra (n, V) buffer.
    if valid_logits.numel() and bool(valid_logits.amin() == -math.inf):
        terms = torch.where(weights == 0, 0.0, terms)
    per_row = -terms.sum(dim=-1)
    if reduction == "none":
        out = per_row.new_zeros(flat_labels.shape).index_put((rows,), per_row)
        return out.reshape(labels.shape)
    return reduce_loss(per_row.sum(), rows.new_tensor(rows.numel()), reduction, num_items_in_batch)
