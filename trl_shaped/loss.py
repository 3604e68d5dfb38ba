"""The rank-aware reward-shaped next-token loss on full logits: the readable reference of METHOD.md section 3.

For each scored position with logits z, p = softmax(z) and ground truth y, the detached weights are

    w_y = p_y ** (1 - (1 - p_y) ** beta)        (positive_form="power")
    w_y = (1 - p_y) ** beta                     (positive_form="linear")
    w_a = p_a * head_reward   for a != y in K_t  (K_t: the top_k most probable tokens)
    w_a = p_a * tail_reward   for a != y not in K_t

and the loss is l = -sum_a sg(w_a) log p_a, whose logit gradient is -(w - p * sum_a w_a). At the defaults
w = onehot(y), so l = -log p_y and the gradient is the cross-entropy's.

The helpers here (`softmax_parts`, `topk_indices`, `positive_weight`) are the small functional core that the
chunked `fused_linear_shaped_loss` and `distribution_stats` reuse. `shaped_loss` itself stays the literal formula
(dense weights, autograd through log_softmax), so that the tests compare the chunked closed forms against it.

Decisions (METHOD.md leaves them open):
    * Ties at the k-th place: K_t is ranked by the float32 logits (the same order as p, without the rounding of
      exp); among tokens whose logit equals the k-th largest, the lower token ids enter K_t first. K_t therefore
      always holds exactly min(k, V) tokens. `top_k >= V` makes every negative token a head token.
    * beta < 0: 1 - p_y is floored at `ONE_MINUS_P_FLOOR` (1e-6) before it is raised to the power beta, which caps
      the linear form's weight at 1e-6 ** beta and keeps both forms finite at p_y == 1.
"""

import torch
import torch.nn.functional as F

from .shaping import ONE_MINUS_P_FLOOR, ShapingConfig, resolve_shaping

REDUCTIONS = ("mean", "sum", "none")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for every input dtype except float64, which is kept (finite-difference checks need it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def softmax_parts(
    logits: torch.Tensor, inplace: bool = False, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shifted logits, unnormalised probabilities and normaliser of logit rows, with a single exp.

    Args:
        logits (`torch.Tensor`): (n, V) float32 (or float64).
        inplace (`bool`): shift `logits` in place (the chunked loss owns its logits buffer).
        out (`torch.Tensor`, *optional*): where to write the exponentials (a reused buffer).

    Returns:
        `(shifted, unnorm, norm)`: shifted = logits - rowmax (<= 0), unnorm = exp(shifted), norm (n, 1) its row sum;
        p = unnorm / norm and log p = shifted - log(norm). The normalisation is left to the caller so that it can be
        folded into the next per-row scaling instead of costing a pass over the vocabulary. Working from the shifted
        logits keeps p * log p exact (0, not 0 * inf) at +-1e4 logits.
    """
    row_max = logits.amax(dim=-1, keepdim=True)
    shifted = logits.sub_(row_max) if inplace else logits - row_max
    unnorm = torch.exp(shifted, out=out) if out is not None else shifted.exp()
    return shifted, unnorm, unnorm.sum(dim=-1, keepdim=True)


def topk_indices(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Token ids of K_t, the `k` largest logits of each row (n, min(k, V)), ties at the k-th place by lower id.

    One `torch.topk` of k + 1 values tells whether the k-th place is tied (the k-th and (k+1)-th values are equal).
    Untied rows need no rule: their top k is unique. In tied rows (common with bf16 logits, whose 8-bit mantissa
    makes equal values frequent) the ids above the tied value are kept and the remaining places go to the lowest
    ids holding the tied value, found with one comparison and one `nonzero` over the row, not a full sort.

    Args:
        logits (`torch.Tensor`): (n, V) logits.
        k (`int`): the size of K_t; `k >= V` selects every token.
    """
    n, vocab = logits.shape
    if k >= vocab:
        return torch.arange(vocab, device=logits.device).expand(n, vocab)
    values, ids = torch.topk(logits, k + 1, dim=-1, sorted=True)
    ids = ids[:, :k]
    tied = values[:, k - 1] == values[:, k]
    if bool(tied.any()):
        # The rule also holds for untied rows (their k-th value has one holder), so all rows go through it together:
        # cheaper than copying the tied rows out of the chunk.
        ids = _break_ties(logits, values[:, :k], ids, k)
    return ids


def _break_ties(logits: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """K_t of rows whose k-th place is tied, from their sorted top-k `values` and `ids` (any order among ties)."""
    tied_value = values[:, k - 1 :]
    # Sorted descending, the first `above` entries are the ids with a value strictly above the tie: they stay.
    above = (values > tied_value).sum(dim=-1, keepdim=True)
    # (row, id) of every logit equal to the tied value, in row-major order, so ids increase within a row.
    holders = (logits == tied_value).nonzero()
    counts = torch.bincount(holders[:, 0], minlength=logits.shape[0])
    starts = (counts.cumsum(0) - counts).unsqueeze(-1)
    place = torch.arange(k, device=logits.device)
    # Place j >= above takes the (j - above)-th lowest id holding the tied value (there are always enough).
    pick = (starts + (place - above).clamp_(min=0)).clamp_(max=holders.shape[0] - 1)
    return torch.where(place < above, ids, holders[:, 1][pick])


def topk_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (n, V) mask of K_t (see `topk_indices`)."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, topk_indices(logits, k), True)


def positive_weight(logp_y: torch.Tensor, config: ShapingConfig) -> torch.Tensor:
    """The detached weight w_y = p_y * r_pos(p_y) of the ground-truth token, from float32 log p_y.

    The power form is evaluated as exp((1 - (1 - p_y) ** beta) * log p_y), which stays finite where p_y ** (...)
    would underflow or overflow; 1 - p_y comes from -expm1(log p_y), accurate as p_y -> 1.
    """
    beta = config.beta
    if beta == 0.0:
        return torch.ones_like(logp_y)
    one_minus_p = -torch.expm1(logp_y)
    if beta < 0:
        one_minus_p = one_minus_p.clamp_min(ONE_MINUS_P_FLOOR)
    scale = one_minus_p.pow(beta)
    if config.positive_form == "linear":
        return scale
    return torch.exp((1.0 - scale) * logp_y)


def shaped_weights(
    logits: torch.Tensor, labels: torch.Tensor, config: ShapingConfig, log_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """The dense detached weights w (n, V) of METHOD.md section 3 for valid rows.

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


def check_labels(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> torch.Tensor:
    """Mask of valid positions; raises if a label that is not `ignore_index` lies outside [0, vocab_size)."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        raise ValueError(
            f"labels must lie in [0, {vocab_size}) or equal ignore_index={ignore_index}; got {labels[bad][0].item()}"
        )
    return valid


def reduce_loss(per_token_sum: torch.Tensor, num_valid: torch.Tensor, reduction: str, num_items_in_batch):
    """Sum, or mean over valid tokens (or over `num_items_in_batch` when the trainer passes it)."""
    if reduction == "sum":
        return per_token_sum
    if num_items_in_batch is not None:
        denom = torch.as_tensor(num_items_in_batch, device=per_token_sum.device, dtype=per_token_sum.dtype)
    else:
        denom = num_valid.to(per_token_sum.dtype)
    # An all-ignored batch gives 0 / 1: a zero that still carries a (zero) gradient, never 0 / 0.
    return per_token_sum / denom.clamp_min(1.0)


def check_reduction(reduction: str, allowed=REDUCTIONS):
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {list(allowed)}, got {reduction!r}")


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
        num_items_in_batch (`int` or `torch.Tensor`, *optional*): divisor of the "mean" reduction instead of the
            number of valid positions (what transformers/TRL pass under gradient accumulation).
        reduction (`str`): "mean", "sum" or "none" (per-position losses shaped like `labels`, 0 where ignored).
        config (`ShapingConfig`, *optional*): the shaping knobs as one object, instead of the loose arguments.

    Returns:
        A float32 tensor (float64 for float64 logits): the loss (a scalar, or shaped like `labels` for reduction="none").
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
    # Only valid rows enter the maths, so ignored positions (padding, prompts) cost nothing and cannot make NaN.
    valid_logits = flat_logits[rows].to(compute_dtype(logits.dtype))
    log_probs = F.log_softmax(valid_logits, dim=-1)
    weights = shaped_weights(valid_logits, flat_labels[rows], config, log_probs=log_probs)
    per_row = -(weights * log_probs).sum(dim=-1)
    if reduction == "none":
        out = per_row.new_zeros(flat_labels.shape).index_put((rows,), per_row)
        return out.reshape(labels.shape)
    return reduce_loss(per_row.sum(), rows.new_tensor(rows.numel()), reduction, num_items_in_batch)
