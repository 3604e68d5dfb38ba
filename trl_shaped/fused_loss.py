"""The shaped loss straight from hidden states and the LM-head weight, without the (tokens x vocabulary) logits.

Like Liger's fused linear cross-entropy, the forward pass walks over chunks of scored tokens; for each chunk it
builds the float32 logits, the loss and the logit gradient dl/dz = -(w - p * sum_a w_a) of METHOD.md section 3,
and immediately folds that gradient into the gradients of the hidden states, the weight and the bias. Only one
chunk of logits is alive at a time; the backward pass merely scales the stored gradients by the incoming one.

Chunk size: unless given, a chunk holds at most `CHUNK_LOGITS_BYTES` (256 MiB) of float32 logits (rows = bytes //
(4 * V), 432 rows at V = 151,936), and the valid tokens are split into equal chunks under that bound. The working
set is two such float32 buffers (the logits, then the exponentials that become the gradient in place; plus one in
the matmul dtype under bf16/fp16), allocated once and reused by every chunk, and (rows, k) top-k data: independent
of the number of tokens. Below ~256 rows per chunk the CPU matmuls lose speed (measured on the benchmark machine).

Precision: the logits are produced by the matmul in the input dtype, or autocast's dtype when autocast is on (what
the model's own `lm_head` does), then everything is float32. The gradients are returned in the dtypes of hidden, weight and bias. The weight's
gradient is a sum over chunks: for a bf16/fp16 weight it is accumulated in a float32 buffer and rounded once at
the end (TRL's chunked log-prob kernel found that rounding every chunk's product to bf16 biases training), at the
cost of a float32 (V, H) buffer while the loss runs.
"""

import math

import torch
from packaging.version import Version

from .diagnostics import STAT_NAMES, row_terms, stats_from_terms
from .loss import check_labels, compute_dtype, positive_weight, reduce_loss, softmax_parts, topk_indices
from .shaping import ShapingConfig, resolve_shaping

CHUNK_LOGITS_BYTES = 256 * 2**20
# torch.addmm(..., out_dtype=float32) from bf16/fp16 inputs exists on CUDA from torch 2.8.
_ADDMM_OUT_DTYPE = Version(torch.__version__) >= Version("2.8")


def default_chunk_size(num_tokens: int, vocab_size: int, budget_bytes: int = CHUNK_LOGITS_BYTES) -> int:
    """Rows per chunk so that one chunk of float32 logits takes about `budget_bytes`."""
    rows = max(1, budget_bytes // (4 * vocab_size))
    if rows >= 16:
        rows -= rows % 16  # multiples of 16 keep the matmuls on their fast paths
    return max(1, min(rows, num_tokens))


def _chunk_logits(hidden, weight, bias, logit_scale, softcap, out, mm_out):
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


def _accumulate(acc: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """acc + a @ b in `dtype` (float32/64) from a, b possibly bf16/fp16, without rounding a @ b to their dtype.

    `acc=None` starts the sum with the first product (no zero-filled (V, H) buffer to add it to).
    """
    if a.dtype == dtype:
        return torch.mm(a, b) if acc is None else acc.addmm_(a, b)
    if a.device.type == "cuda" and _ADDMM_OUT_DTYPE:
        if acc is None:
            return torch.mm(a, b, out_dtype=dtype)
        return torch.addmm(acc, a, b, out_dtype=dtype, out=acc)
    return torch.mm(a.to(dtype), b.to(dtype)) if acc is None else acc.addmm_(a.to(dtype), b.to(dtype))


def _chunk_loss_and_grad(z, labels, config: ShapingConfig, want_grad: bool, want_stats: bool, exp_out=None):
    """Shaped loss per row, dl/dz (written over the exponentials) and per-row diagnostics of one chunk.

    Returns `(loss_rows, grad, stats)`; grad is None unless asked, stats None unless asked. `z` is consumed; the
    exponentials (then the gradient) go to `exp_out` when given.
    """
    head, tail = config.head_reward, config.tail_reward
    head_ids = topk_indices(z, config.top_k) if (config.needs_topk or want_stats) else None
    shifted, unnorm, norm = softmax_parts(z, inplace=True, out=exp_out)
    terms = row_terms(
        shifted, unnorm, norm, labels, head_ids, with_entropy=(tail != 0.0 or want_stats), with_top1=want_stats
    )
    logp_y, p_y = terms["logp_y"], terms["p_y"]
    w_y = positive_weight(logp_y, config)

    # l = -(w_y log p_y + sum_{a != y} r_a p_a log p_a), r_a = tail + (head - tail) * 1[a in K_t], written with
    # sums over the vocabulary (plogp) and over K_t only; likewise S = sum_a w_a.
    loss_rows = -w_y * logp_y
    total_w = w_y
    if tail != 0.0:
        loss_rows = loss_rows - tail * (terms["plogp"] - p_y * logp_y)
        total_w = total_w + tail * (-torch.expm1(logp_y))
    if head != tail:
        in_k = terms["target_in_topk"]
        loss_rows = loss_rows - (head - tail) * (terms["topk_plogp"] - in_k * p_y * logp_y)
        total_w = total_w + (head - tail) * (terms["topk_mass"] - in_k * p_y)

    grad = None
    if want_grad:
        # dl/dz_a = p_a * (S - r_a) for a != y and p_y * S - w_y at y: one scaling pass over the vocabulary (which
        # also normalises the exponentials), then k + 1 corrections per row.
        grad = unnorm.mul_((total_w - tail).unsqueeze(-1) / norm)
        if head != tail:
            grad.scatter_add_(-1, head_ids, terms["head_p"] * -(head - tail))
        grad.scatter_(-1, labels.unsqueeze(-1), (p_y * total_w - w_y).unsqueeze(-1))

    stats = stats_from_terms(terms) if want_stats else None
    return loss_rows, grad, stats


def _fused_forward(
    hidden,
    weight,
    bias,
    labels,
    config,
    ignore_index,
    chunk_size,
    logit_scale,
    softcap,
    want_stats,
    need_hidden_grad,
    need_weight_grad,
    need_bias_grad,
):
    """Loss sum, number of valid rows, stats sums and the (unscaled) gradients, one chunk of logits at a time."""
    vocab = weight.shape[0]
    valid = check_labels(labels, vocab, ignore_index)
    rows = valid.nonzero().squeeze(-1)
    n = rows.numel()
    want_grad = need_hidden_grad or need_weight_grad or need_bias_grad
    grad_hidden = torch.zeros_like(hidden) if need_hidden_grad else None
    grad_weight = None
    loss_sum = torch.zeros((), dtype=compute_dtype(weight.dtype), device=hidden.device)
    grad_bias = torch.zeros(vocab, dtype=loss_sum.dtype, device=hidden.device) if need_bias_grad else None
    stat_sums = torch.zeros(len(STAT_NAMES), dtype=torch.float32, device=hidden.device)
    chunk = chunk_size or default_chunk_size(n, vocab)
    # Equal chunks (no small last one), and (chunk, V) buffers reused by every chunk: a fresh allocation of that
    # size per chunk costs page faults on a CPU and allocator churn on a GPU.
    chunk = math.ceil(n / max(1, math.ceil(n / chunk))) if n else 1
    logits_buf = torch.empty(chunk, vocab, dtype=loss_sum.dtype, device=hidden.device)
    exp_buf = torch.empty_like(logits_buf)
    mm_buf = (
        None if weight.dtype == loss_sum.dtype else torch.empty(chunk, vocab, dtype=weight.dtype, device=hidden.device)
    )
    softcap_grad = softcap is not None
    for start in range(0, n, chunk):
        idx = rows[start : start + chunk]
        h, y = hidden[idx].to(weight.dtype), labels[idx]
        size = idx.numel()
        z = _chunk_logits(
            h, weight, bias, logit_scale, softcap, logits_buf[:size], None if mm_buf is None else mm_buf[:size]
        )
        if softcap_grad and want_grad:
            # d softcap / d pre-cap = 1 - tanh^2 = 1 - (z / c)^2, kept before z is consumed.
            chain = (z / softcap).square_().neg_().add_(1.0).mul_(logit_scale)
        loss_rows, grad, stats = _chunk_loss_and_grad(z, y, config, want_grad, want_stats, exp_buf[:size])
        loss_sum += loss_rows.sum()
        if want_stats:
            stat_sums += torch.stack([stats[name].sum() for name in STAT_NAMES]).float()
        if not want_grad:
            continue
        if softcap_grad:
            grad.mul_(chain)
            del chain
        elif logit_scale != 1.0:
            grad.mul_(logit_scale)
        grad_in = grad if mm_buf is None else mm_buf[:size].copy_(grad)
        if need_hidden_grad:
            grad_hidden.index_copy_(0, idx, (grad_in @ weight).to(hidden.dtype))
        if need_weight_grad:
            grad_weight = _accumulate(grad_weight, grad_in.t(), h, loss_sum.dtype)
        if need_bias_grad:
            grad_bias += grad.sum(dim=0)
        del grad, grad_in, z
    if need_weight_grad and grad_weight is None:
        grad_weight = torch.zeros(weight.shape, dtype=loss_sum.dtype, device=weight.device)
    return loss_sum, n, stat_sums, grad_hidden, grad_weight, grad_bias


def _matmul_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype of the logits matmul: autocast's when autocast is on for the weight's device, else the weight's."""
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


class _FusedLinearShapedLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        bias,
        labels,
        config,
        ignore_index,
        num_items_in_batch,
        reduction,
        chunk_size,
        logit_scale,
        softcap,
        want_stats,
        grad_enabled,
        mm_dtype,
    ):
        need = (
            grad_enabled and hidden.requires_grad,
            grad_enabled and weight.requires_grad,
            grad_enabled and bias is not None and bias.requires_grad,
        )
        # Under autocast the matmuls run in the autocast dtype, as the model's own lm_head would; the casts are made
        # here explicitly and autocast is switched off, so that the float32 buffers and accumulators stay float32.
        with torch.autocast(hidden.device.type, enabled=False):
            loss_sum, n, stat_sums, g_hidden, g_weight, g_bias = _fused_forward(
                hidden,
                weight.to(mm_dtype),
                None if bias is None else bias.to(mm_dtype),
                labels,
                config,
                ignore_index,
                chunk_size,
                logit_scale,
                softcap,
                want_stats,
                *need,
            )
        loss = reduce_loss(loss_sum, torch.tensor(n, device=hidden.device), reduction, num_items_in_batch)
        # The loss is the sum of per-token terms times one constant; so are its gradients.
        if reduction == "mean":
            denom = float(num_items_in_batch) if num_items_in_batch is not None else float(n)
            scale = 1.0 / max(denom, 1.0)
            for g in (g_hidden, g_weight, g_bias):
                if g is not None:
                    g.mul_(scale)
        # The weight's gradient was accumulated in float32; it is rounded to the weight's dtype once, here.
        ctx.grads = (g_hidden, None if g_weight is None else g_weight.to(weight.dtype), g_bias)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        stats = torch.cat([stat_sums, stat_sums.new_tensor([float(n)])])
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        g_hidden, g_weight, g_bias = ctx.grads
        ctx.grads = None
        if torch.ne(grad_loss, 1.0):
            g_hidden = g_hidden * grad_loss.to(g_hidden.dtype) if g_hidden is not None else None
            g_weight = g_weight * grad_loss.to(g_weight.dtype) if g_weight is not None else None
            g_bias = g_bias * grad_loss if g_bias is not None else None
        if g_bias is not None:
            g_bias = g_bias.to(ctx.bias_dtype)
        return g_hidden, g_weight, g_bias, *([None] * 11)


def fused_linear_shaped_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    beta: float = 0.0,
    top_k: int = 100,
    head_reward: float = 0.0,
    tail_reward: float = 0.0,
    positive_form: str = "power",
    ignore_index: int = -100,
    num_items_in_batch=None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    config: ShapingConfig | None = None,
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
    return_stats: bool = False,
):
    """Shaped loss of the logits `hidden @ weight.T + bias`, computed chunk by chunk without materialising them.

    Same value and gradients as `shaped_loss(hidden @ weight.T + bias, labels, ...)`.

    Args:
        hidden (`torch.Tensor`): (N, H) or (B, T, H) final hidden states, aligned with `labels` (no shift inside).
        weight (`torch.Tensor`): (V, H) LM-head weight; may be frozen (its gradient is then skipped).
        labels (`torch.Tensor`): (N,) or (B, T) token ids, `ignore_index` where a position is not scored.
        bias (`torch.Tensor`, *optional*): (V,) LM-head bias.
        beta, top_k, head_reward, tail_reward, positive_form: the shaping knobs (see `ShapingConfig`).
        ignore_index (`int`): label value of positions that are not scored.
        num_items_in_batch (`int` or `torch.Tensor`, *optional*): divisor of the mean instead of the valid count.
        reduction (`str`): "mean" or "sum".
        chunk_size (`int`, *optional*): tokens per chunk; by default from `CHUNK_LOGITS_BYTES` of float32 logits.
        config (`ShapingConfig`, *optional*): the shaping knobs as one object.
        logit_scale (`float`): multiplier of the logits (e.g. a model's `logit_scale`), applied before the softcap.
        final_logit_softcapping (`float`, *optional*): c in tanh(z / c) * c (Gemma-style), applied last.
        return_stats (`bool`): also return a dict of detached float32 SUMS over valid tokens of the diagnostics
            (keys of `distribution_stats` with K_t of size `top_k`) plus "num_tokens".

    Returns:
        The float32 loss, or `(loss, stats)` when `return_stats=True`.
    """
    config = resolve_shaping(
        config, beta=beta, top_k=top_k, head_reward=head_reward, tail_reward=tail_reward, positive_form=positive_form
    )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' for the fused loss, got {reduction!r}")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight must be (V, H) with H = hidden.shape[-1]; got {tuple(weight.shape)} and hidden {tuple(hidden.shape)}"
        )
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be labels {tuple(labels.shape)} plus a hidden axis")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)) or not math.isfinite(logit_scale):
        raise ValueError(f"logit_scale must be a finite float, got {logit_scale!r}")
    softcap = final_logit_softcapping
    if softcap is not None and (not isinstance(softcap, (int, float)) or not math.isfinite(softcap) or softcap <= 0):
        raise ValueError(f"final_logit_softcapping must be None or a finite float > 0, got {softcap!r}")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    loss, stats = _FusedLinearShapedLoss.apply(
        flat_hidden,
        weight,
        bias,
        flat_labels,
        config,
        ignore_index,
        num_items_in_batch,
        reduction,
        chunk_size,
        float(logit_scale),
        None if softcap is None else float(softcap),
        return_stats,
        torch.is_grad_enabled(),
        _matmul_dtype(weight),
    )
    if not return_stats:
        return loss
    return loss, {name: stats[i] for i, name in enumerate((*STAT_NAMES, "num_tokens"))}
