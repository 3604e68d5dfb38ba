"""The functional core of the shaped loss: every per-token formula, on plain tensors.

It imports nothing of the package but the leaf module of argument checks (`validation.py`).
The reference loss (`loss.py`), the diagnostics (`diagnostics.py`) and the chunked autograd Function
(`fused_loss.py`) are built from these pieces and import only from here, so one formula has one implementation.
Read top to bottom: argument checks, softmax parts, the head set K_t, the positive weight, per-row sums, the loss
and logit gradient of one chunk, reduction, and the logits of one chunk. The maths is in docs/method.md.

A `config` argument is any object with the attributes of `shaping.ShapingConfig` (beta, top_k, head_reward,
tail_reward, positive_form, needs_topk); this module validates numbers but does not import the config class.
"""

import math
from typing import NamedTuple

import torch

from .validation import check_choice, check_real

# --- argument checks ------------------------------------------------------------------------------------------------

REDUCTIONS = ("mean", "sum", "none")

# Smallest beta accepted for either positive form. Why, and the bounds it gives: `ShapingConfig`'s docstring and
# docs/method.md ("The range of beta").
MIN_BETA = -1.0

# Smallest value of 1 - p_y raised to a negative beta in the linear form, w_y = (1 - p_y) ** beta, which is infinite
# at p_y == 1 (float32 rounds p_y to exactly 1 once 1 - p_y < 6e-8): the weight is capped at 1e-6 ** beta.
ONE_MINUS_P_FLOOR = 1e-6


def check_reduction(reduction: str, allowed=REDUCTIONS):
    check_choice("reduction", reduction, allowed)


def check_labels(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> torch.Tensor:
    """Mask of valid positions; raises if a label that is not `ignore_index` lies outside [0, vocab_size)."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        raise ValueError(
            f"labels must lie in [0, {vocab_size}) or equal ignore_index={ignore_index}; got {labels[bad][0].item()}"
        )
    return valid


def check_num_items(num_items_in_batch, num_valid: int) -> float | None:
    """The divisor of the "mean" reduction as a float (None when not given), checked before any compute.

    It must be a finite number > 0 (a Python/NumPy number or a one-element tensor). 0 is accepted only for a batch
    without scored tokens, whose loss is 0 whatever the divisor: under gradient accumulation a window where every
    label is ignored counts 0 items, and that must not stop a run.
    """
    if num_items_in_batch is None:
        return None
    value = num_items_in_batch
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool:
            raise ValueError(f"num_items_in_batch must be a number or a one-element tensor, got {value!r}")
        value = value.item()
    value = check_real(
        "num_items_in_batch", value, minimum=0.0, allowed="a finite number > 0, the number of scored tokens"
    )
    if value == 0 and num_valid > 0:
        raise ValueError(f"num_items_in_batch must be > 0 (the number of scored tokens), got 0 for {num_valid} tokens")
    return value


# --- softmax parts and the head set K_t ----------------------------------------------------------------------------


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for every input dtype except float64, which is kept (finite-difference checks need it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def softmax_parts(
    logits: torch.Tensor, inplace: bool = False, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shifted logits, unnormalised probabilities and normaliser of logit rows, with a single exp.

    Args:
        logits (`torch.Tensor`): (n, V) float32 (or float64); -inf entries (masked tokens) are allowed.
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
    """Token ids of K_t, the `k` largest logits of each row (n, min(k, V)); ties at the k-th place go to lower ids.

    The tie rule: K_t is ranked by the float32 logits (the order of p without the rounding of exp); among tokens
    whose logit equals the k-th largest, lower token ids enter first, so K_t always holds exactly min(k, V) tokens
    and is the first k of a stable descending sort. `k >= V` selects every token.

    One `torch.topk` of k + 1 values tells whether the k-th place is tied (the k-th and (k+1)-th values are equal).
    Untied rows need no rule: their top k is unique. In tied rows (common with bf16 logits, whose 8-bit mantissa
    makes equal values frequent) the ids above the tied value are kept and the remaining places go to the lowest
    ids holding the tied value, found with one comparison and one `nonzero` over the row, not a full sort.

    Args:
        logits (`torch.Tensor`): (n, V) logits.
        k (`int`): the size of K_t.
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


# --- the positive weight -------------------------------------------------------------------------------------------


def positive_weight(logp_y: torch.Tensor, config) -> torch.Tensor:
    """The detached weight w_y = p_y * r_pos(p_y) of the ground-truth token, from float32 log p_y.

    Finite for every p_y in [0, 1] at every beta >= `MIN_BETA`; p_y = 0 (a -inf target logit) gives w_y = 1.

    Args:
        logp_y (`torch.Tensor`): (n,) log-probabilities of the ground-truth tokens (-inf allowed).
        config: an object with `beta` (float >= -1) and `positive_form` ("power" or "linear").
    """
    beta = config.beta
    if beta == 0.0:
        return torch.ones_like(logp_y)
    # 1 - p_y from -expm1(log p_y): accurate as p_y -> 1, where 1 - exp(log p_y) would cancel.
    one_minus_p = -torch.expm1(logp_y)
    if config.positive_form == "linear":
        if beta < 0:
            one_minus_p = one_minus_p.clamp_min(ONE_MINUS_P_FLOOR)
        return one_minus_p.pow(beta)
    # Power form, as exp((1 - (1 - p_y) ** beta) * log p_y): finite where p_y ** (...) would under- or overflow.
    exponent = (1.0 - one_minus_p.pow(beta)) * logp_y
    # The two 0 * inf products take their limits. p_y == 1 (beta < 0: inf * 0): the exponent tends to 0 for
    # beta > -1 and to 1 at beta = -1 (w_y -> e). p_y == 0 (0 * -inf): it tends to 0 (w_y -> 1).
    if beta < 0:
        exponent = torch.where(logp_y == 0, 1.0 if beta == -1.0 else 0.0, exponent)
    exponent = torch.where(logp_y == -math.inf, 0.0, exponent)
    # At beta >= MIN_BETA the exponent is at most 1 (w_y <= e); the clamp only guards against rounding near p_y == 1.
    return exponent.clamp_max_(1.0).exp_()


# --- per-row sums and the diagnostics -------------------------------------------------------------------------------

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


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product as a batched matmul: one pass, no (n, V) temporary (vecdot and (a * b).sum make one)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def xlogx_terms(p: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """p * log p with 0 where p == 0 (a -inf logit has p = 0 and log p = -inf: the limit is 0, not NaN)."""
    return torch.where(p == 0, 0.0, p * logp)


class RowTerms(NamedTuple):
    """Per-row sums that the loss value and the diagnostics are made of (each (n,) unless said; `None` when not
    computed).

    Args:
        logp_y, p_y: log-probability and probability of the ground-truth token.
        plogp: sum over the vocabulary of p log p (`with_entropy`).
        head_p: (n, k) p over K_t (with head ids).
        topk_mass: sum over K_t of p (with head ids).
        topk_plogp: sum over K_t of p log p (with head ids).
        target_in_topk: 1.0 where the ground-truth token is in K_t, else 0.0 (with head ids).
        top1: 1.0 where the ground-truth token is the argmax, else 0.0 (with head ids and `with_top1`).
    """

    logp_y: torch.Tensor
    p_y: torch.Tensor
    plogp: torch.Tensor | None = None
    head_p: torch.Tensor | None = None
    topk_mass: torch.Tensor | None = None
    topk_plogp: torch.Tensor | None = None
    target_in_topk: torch.Tensor | None = None
    top1: torch.Tensor | None = None


def row_terms(
    shifted: torch.Tensor,
    unnorm: torch.Tensor,
    norm: torch.Tensor,
    labels: torch.Tensor,
    head_ids: torch.Tensor | None,
    with_entropy: bool = True,
    with_top1: bool = True,
) -> RowTerms:
    """Per-row sums that the loss value and the diagnostics are made of.

    Args:
        shifted, unnorm, norm: the output of `softmax_parts` for (n, V) logits (p = unnorm / norm).
        labels (`torch.Tensor`): (n,) ground-truth ids, all valid.
        head_ids (`torch.Tensor` or `None`): (n, k) ids of K_t from `topk_indices`; `None` computes only
            `logp_y`, `p_y` (and `plogp`).
        with_entropy (`bool`): also compute `plogp` (one pass over the vocabulary).
        with_top1 (`bool`): also compute `top1` (an argmax over the vocabulary).

    Returns:
        [`RowTerms`].
    """
    rows = labels.unsqueeze(-1)
    log_norm = norm.log().squeeze(-1)
    inv_norm = norm.reciprocal()
    logp_y = shifted.gather(-1, rows).squeeze(-1) - log_norm
    p_y = unnorm.gather(-1, rows).squeeze(-1) * inv_norm.squeeze(-1)
    plogp = None
    if with_entropy:
        # sum p = 1, so sum p log p = (unnorm . shifted) / norm - log norm.
        dot = row_dot(unnorm, shifted)
        nan_rows = dot.isnan()
        if bool(nan_rows.any()):
            # A -inf logit (a masked token) makes 0 * -inf in the dot; its true term is 0. Redone only for those
            # rows, so that finite logits pay one (n,) check and no extra pass over the vocabulary.
            idx = nan_rows.nonzero().squeeze(-1)
            dot[idx] = row_dot(unnorm[idx], torch.where(unnorm[idx] == 0, 0.0, shifted[idx]))
        plogp = dot * inv_norm.squeeze(-1) - log_norm
    if head_ids is None:
        return RowTerms(logp_y, p_y, plogp)
    # K_t has k entries per row: everything about it is a gather of (n, k) values, not a pass over the vocabulary.
    head_p = unnorm.gather(-1, head_ids) * inv_norm
    topk_mass = head_p.sum(dim=-1)
    # K_t may hold -inf tokens when fewer than k are finite: the clamp turns their 0 * -inf into 0 * (-3.4e38) = 0.
    head_shifted = shifted.gather(-1, head_ids).clamp_min_(torch.finfo(shifted.dtype).min)
    topk_plogp = (head_p * head_shifted).sum(dim=-1) - topk_mass * log_norm
    target_in_topk = (head_ids == rows).any(dim=-1).to(shifted.dtype)
    # argmax returns the first maximum: the same lower-id rule as the ties of K_t.
    top1 = (shifted.argmax(dim=-1) == labels).to(shifted.dtype) if with_top1 else None
    return RowTerms(logp_y, p_y, plogp, head_p, topk_mass, topk_plogp, target_in_topk, top1)


def stats_from_terms(terms: RowTerms) -> dict[str, torch.Tensor]:
    """The per-row diagnostics of docs/method.md from `row_terms` (computed with head ids, entropy, top1)."""
    mass = terms.topk_mass
    return {
        "entropy": -terms.plogp,
        # Entropy of p restricted to K_t and renormalised: log M - (1/M) sum_K p log p. M >= max p > 0.
        "topk_entropy": torch.log(mass) - terms.topk_plogp / mass,
        "topk_mass": mass,
        "tail_mass": (1.0 - mass).clamp_min(0.0),
        "target_prob": terms.p_y,
        "target_in_topk": terms.target_in_topk,
        "top1_accuracy": terms.top1,
        "nll": -terms.logp_y,
    }


# --- loss and logit gradient of one chunk ---------------------------------------------------------------------------


def chunk_loss_and_grad(z, labels, config, want_grad: bool, want_stats: bool, exp_out=None):
    """Shaped loss per row, dl/dz (written over the exponentials) and per-row diagnostics of (n, V) logits `z`.

    Returns `(loss_rows, grad, stats)`; grad is None unless asked, stats None unless asked. `z` is consumed (shifted
    in place); the exponentials (then the gradient) go to `exp_out` when given. A -inf logit of a non-target token
    contributes nothing; a -inf target logit gives an infinite loss and a finite gradient, as F.cross_entropy does.
    """
    head, tail = config.head_reward, config.tail_reward
    head_ids = topk_indices(z, config.top_k) if (config.needs_topk or want_stats) else None
    shifted, unnorm, norm = softmax_parts(z, inplace=True, out=exp_out)
    terms = row_terms(
        shifted, unnorm, norm, labels, head_ids, with_entropy=(tail != 0.0 or want_stats), with_top1=want_stats
    )
    logp_y, p_y = terms.logp_y, terms.p_y
    one_minus_p = -torch.expm1(logp_y)
    w_y = positive_weight(logp_y, config)

    # l = -(w_y log p_y + sum_{a != y} r_a p_a log p_a), r_a = tail + (head - tail) * 1[a in K_t], written with
    # sums over the vocabulary (plogp) and over K_t only; likewise S = sum_a w_a.
    loss_rows = -w_y * logp_y
    total_w = w_y
    if tail != 0.0 or head != tail:
        target_plogp = xlogx_terms(p_y, logp_y)
    if tail != 0.0:
        loss_rows = loss_rows - tail * (terms.plogp - target_plogp)
        total_w = total_w + tail * one_minus_p
    if head != tail:
        in_k = terms.target_in_topk
        loss_rows = loss_rows - (head - tail) * (terms.topk_plogp - in_k * target_plogp)
        total_w = total_w + (head - tail) * (terms.topk_mass - in_k * p_y)

    grad = None
    if want_grad:
        # dl/dz_a = p_a * (S - r_a) for a != y and p_y * S - w_y at y: one scaling pass over the vocabulary (which
        # also normalises the exponentials), then k + 1 corrections per row. At y, p_y * S - w_y is written as
        # p_y * (S - w_y) - w_y * (1 - p_y): no cancellation when w_y is large and p_y close to 1 (linear form).
        grad = unnorm.mul_((total_w - tail).unsqueeze(-1) / norm)
        if head != tail:
            grad.scatter_add_(-1, head_ids, terms.head_p * -(head - tail))
        grad.scatter_(-1, labels.unsqueeze(-1), (p_y * (total_w - w_y) - w_y * one_minus_p).unsqueeze(-1))

    stats = stats_from_terms(terms) if want_stats else None
    return loss_rows, grad, stats


# --- reduction -------------------------------------------------------------------------------------------------------


def reduce_loss(per_token_sum: torch.Tensor, num_valid: torch.Tensor, reduction: str, num_items_in_batch):
    """Sum, or mean over valid tokens (or over `num_items_in_batch`, checked by `check_num_items`, when given)."""
    if reduction == "sum":
        return per_token_sum
    if num_items_in_batch is not None:
        denom = torch.as_tensor(num_items_in_batch, device=per_token_sum.device, dtype=per_token_sum.dtype)
        # 0 is accepted only without scored tokens (check_num_items): the sum is 0, and 0 / 1 keeps it so.
        return per_token_sum / torch.where(denom == 0, 1.0, denom)
    # An all-ignored batch gives 0 / 1: a zero that still carries a (zero) gradient, never 0 / 0.
    return per_token_sum / num_valid.to(per_token_sum.dtype).clamp_min(1.0)


# --- logits of one chunk ---------------------------------------------------------------------------------------------

CHUNK_LOGITS_BYTES = 256 * 2**20


def default_chunk_size(num_tokens: int, vocab_size: int, budget_bytes: int = CHUNK_LOGITS_BYTES) -> int:
    """Rows per chunk so that one chunk of float32 logits takes about `budget_bytes`."""
    rows = max(1, budget_bytes // (4 * vocab_size))
    if rows >= 16:
        rows -= rows % 16  # multiples of 16 keep the matmuls on their fast paths
    return max(1, min(rows, num_tokens))


def logits_buffers(
    rows: int, vocab_size: int, weight: torch.Tensor, device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(out, mm_out)` for `chunk_logits`, allocated once and reused by every chunk: (rows, V) logits in the compute
    dtype, and a buffer in the weight's dtype for the matmul when that is not the compute dtype (else None)."""
    out = torch.empty(rows, vocab_size, dtype=compute_dtype(weight.dtype), device=device)
    mm_out = None if weight.dtype == out.dtype else torch.empty(rows, vocab_size, dtype=weight.dtype, device=device)
    return out, mm_out


def chunk_logits(hidden, weight, bias, logit_scale, softcap, out, mm_out):
    """Float32 logits of one chunk, written into `out`: (hidden @ W^T + b) * scale, then softcap tanh(z / c) * c.

    `mm_out` is a buffer in the weight's dtype for the matmul when that dtype is not the compute dtype.
    """
    target = out if mm_out is None else mm_out
    if bias is None:
        torch.mm(hidden, weight.t(), out=target)
    else:
        torch.addmm(bias.to(weight.dtype), hidden, weight.t(), out=target)
    if mm_out is not None:
        out.copy_(mm_out)
    if logit_scale != 1.0:
        out.mul_(logit_scale)
    if softcap is not None:
        out.div_(softcap).tanh_().mul_(softcap)
    return out
