"""The shaped loss straight from hidden states and the LM-head weight, without the (tokens x vocabulary) logits.

Like Liger's fused linear cross-entropy, the forward pass walks over chunks of scored tokens; for each chunk it
builds the float32 logits, the loss and the logit gradient dl/dz = -(w - p * sum_a w_a) of docs/method.md,
and immediately folds that gradient into the gradients of the hidden states, the weight and the bias. Only one
chunk of logits is alive at a time; the backward pass merely scales the stored gradients by the incoming one.
The per-chunk maths (loss, logit gradient, diagnostics) is `loss_core.chunk_loss_and_grad`; this module holds the
loop over chunks, the autograd Function and the wrapper.

Chunk size: unless given, a chunk holds at most `CHUNK_LOGITS_BYTES` (256 MiB) of float32 logits (rows = bytes //
(4 * V), 432 rows at V = 151,936), and the valid tokens are split into equal chunks under that bound. The working
set is two such float32 buffers (the logits, then the exponentials that become the gradient in place; plus one in
the matmul dtype under bf16/fp16), allocated once and reused by every chunk, and (rows, k) top-k data: independent
of the number of tokens. Below ~256 rows per chunk the CPU matmuls lose speed (measured on the benchmark machine).

Precision: the logits are produced by the matmul in the input dtype, or autocast's dtype when autocast is on (what
the model's own `lm_head` does), then everything is float32. The gradients are returned in the dtypes of hidden,
weight and bias. The weight's gradient is a sum over chunks: for a bf16/fp16 weight it is accumulated in a float32
buffer and rounded once at the end (TRL's chunked log-prob kernel found that rounding every chunk's product to bf16
biases training), at the cost of a float32 (V, H) buffer while the loss runs.
"""

import math

import torch
from packaging.version import Version

from .loss_core import (
    CHUNK_LOGITS_BYTES,
    STAT_NAMES,
    check_labels,
    check_num_items,
    chunk_logits,
    chunk_loss_and_grad,
    compute_dtype,
    default_chunk_size,
    logits_buffers,
    reduce_loss,
)
from .shaping import ShapingConfig, resolve_shaping
from .validation import check_int, check_real

__all__ = ["CHUNK_LOGITS_BYTES", "chunk_logits", "default_chunk_size", "fused_linear_shaped_loss"]

# torch.addmm(..., out_dtype=float32) from bf16/fp16 inputs exists on CUDA from torch 2.8.
_ADDMM_OUT_DTYPE = Version(torch.__version__) >= Version("2.8")


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


def _fused_forward(
    hidden,
    weight,
    bias,
    labels,
    rows,
    config,
    chunk_size,
    logit_scale,
    softcap,
    want_stats,
    stats_groups,
    num_groups,
    need_hidden_grad,
    need_weight_grad,
    need_bias_grad,
):
    """Loss sum, number of valid rows, stats sums and the (unscaled) gradients, one chunk of logits at a time."""
    vocab = weight.shape[0]
    n = rows.numel()
    want_grad = need_hidden_grad or need_weight_grad or need_bias_grad
    grad_hidden = torch.zeros_like(hidden) if need_hidden_grad else None
    grad_weight = None
    loss_sum = torch.zeros((), dtype=compute_dtype(weight.dtype), device=hidden.device)
    grad_bias = torch.zeros(vocab, dtype=loss_sum.dtype, device=hidden.device) if need_bias_grad else None
    stat_sums = torch.zeros(max(num_groups, 1), len(STAT_NAMES), dtype=torch.float32, device=hidden.device)
    chunk = chunk_size or default_chunk_size(n, vocab)
    # Equal chunks (no small last one), and (chunk, V) buffers reused by every chunk: a fresh allocation of that
    # size per chunk costs page faults on a CPU and allocator churn on a GPU.
    chunk = math.ceil(n / max(1, math.ceil(n / chunk))) if n else 1
    logits_buf, mm_buf = logits_buffers(chunk, vocab, weight, hidden.device)
    exp_buf = torch.empty_like(logits_buf)
    softcap_grad = softcap is not None
    for start in range(0, n, chunk):
        idx = rows[start : start + chunk]
        h, y = hidden[idx].to(weight.dtype), labels[idx]
        size = idx.numel()
        z = chunk_logits(
            h, weight, bias, logit_scale, softcap, logits_buf[:size], None if mm_buf is None else mm_buf[:size]
        )
        if softcap_grad and want_grad:
            # d softcap / d pre-cap = 1 - tanh^2 = 1 - (z / c)^2, kept before z is consumed.
            softcap_slope = (z / softcap).square_().neg_().add_(1.0).mul_(logit_scale)
        loss_rows, grad, stats = chunk_loss_and_grad(z, y, config, want_grad, want_stats, exp_buf[:size])
        loss_sum += loss_rows.sum()
        if want_stats and stats_groups is None:
            stat_sums[0] += torch.stack([stats[name].sum() for name in STAT_NAMES]).float()
        elif want_stats:
            stat_sums.index_add_(0, stats_groups[idx], torch.stack([stats[name] for name in STAT_NAMES], dim=1).float())
        if not want_grad:
            continue
        if softcap_grad:
            grad.mul_(softcap_slope)
            del softcap_slope
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
        rows,
        config,
        num_items_in_batch,
        reduction,
        chunk_size,
        logit_scale,
        softcap,
        want_stats,
        stats_groups,
        num_groups,
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
                rows,
                config,
                chunk_size,
                logit_scale,
                softcap,
                want_stats,
                stats_groups,
                num_groups,
                *need,
            )
        loss = reduce_loss(loss_sum, torch.tensor(n, device=hidden.device), reduction, num_items_in_batch)
        # The loss is the sum of per-token terms times one constant; so are its gradients. num_items_in_batch == 0
        # only comes with n == 0 (check_num_items), where the gradients are zero whatever the divisor.
        if reduction == "mean":
            denom = num_items_in_batch if num_items_in_batch is not None else float(n)
            scale = 1.0 / (denom if denom > 0 else 1.0)
            for g in (g_hidden, g_weight, g_bias):
                if g is not None:
                    g.mul_(scale)
        # The weight's gradient was accumulated in float32; it is rounded to the weight's dtype once, here. The
        # gradients go through save_for_backward, not ctx attributes, so that saved-tensor hooks (TRL's
        # activation_offloading) can move them off the device, and so that retain_graph=True keeps them for a
        # second backward.
        ctx.save_for_backward(g_hidden, None if g_weight is None else g_weight.to(weight.dtype), g_bias)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        if stats_groups is None:
            stats = torch.cat([stat_sums[0], stat_sums.new_tensor([float(n)])])
        else:
            counts = torch.bincount(stats_groups[rows], minlength=num_groups).to(stat_sums.dtype)
            stats = torch.cat([stat_sums[:num_groups], counts.unsqueeze(1)], dim=1)
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        g_hidden, g_weight, g_bias = ctx.saved_tensors
        # Products make new tensors: the saved ones stay as they are, for a second backward under retain_graph.
        if torch.ne(grad_loss, 1.0):
            g_hidden = g_hidden * grad_loss.to(g_hidden.dtype) if g_hidden is not None else None
            g_weight = g_weight * grad_loss.to(g_weight.dtype) if g_weight is not None else None
            g_bias = g_bias * grad_loss if g_bias is not None else None
        if g_bias is not None:
            g_bias = g_bias.to(ctx.bias_dtype)
        return g_hidden, g_weight, g_bias, *([None] * 13)


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
    stats_groups: torch.Tensor | None = None,
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
        num_items_in_batch (`int`, `float` or `torch.Tensor`, *optional*): divisor of the mean instead of the valid
            count. Must be > 0; 0 is accepted only when no position is scored (the loss is then 0).
        reduction (`str`): "mean" or "sum".
        chunk_size (`int`, *optional*): tokens per chunk; by default from `CHUNK_LOGITS_BYTES` of float32 logits.
        config (`ShapingConfig`, *optional*): the shaping knobs as one object.
        logit_scale (`float`): multiplier of the logits (e.g. a model's `logit_scale`), applied before the softcap.
        final_logit_softcapping (`float`, *optional*): c in tanh(z / c) * c (Gemma-style), applied last.
        return_stats (`bool`): also return a dict of detached float32 SUMS over valid tokens of the diagnostics
            (keys of `distribution_stats` with K_t of size `top_k`) plus "num_tokens".
        stats_groups (`torch.Tensor`, *optional*): non-negative integer group of each position (e.g. the sample it
            belongs to), shaped like `labels`; with it each stats value is a (G,) tensor of per-group sums, G = the
            largest group + 1 (so that metrics can be gathered per sample, dropping duplicated ones).

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
            f"weight must be (V, H) with H = hidden.shape[-1]; got {tuple(weight.shape)} and hidden "
            f"{tuple(hidden.shape)}"
        )
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be labels {tuple(labels.shape)} plus a hidden axis")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    logit_scale = check_real("logit_scale", logit_scale)
    softcap = final_logit_softcapping
    if softcap is not None:
        # bool is rejected: `final_logit_softcapping=True` would otherwise be read as a cap of 1.0.
        softcap = check_real(
            "final_logit_softcapping", softcap, minimum=0, open_minimum=True, allowed="None or a finite real number > 0"
        )
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    # Labels and the divisor are checked here, before any logits are computed.
    rows = check_labels(flat_labels, weight.shape[0], ignore_index).nonzero().squeeze(-1)
    num_items_in_batch = check_num_items(num_items_in_batch, rows.numel())
    num_groups = 0
    if stats_groups is not None:
        if stats_groups.shape != labels.shape or stats_groups.dtype.is_floating_point:
            raise ValueError(f"stats_groups must be integers shaped like labels {tuple(labels.shape)}")
        stats_groups = stats_groups.reshape(-1).to(flat_labels.device)
        num_groups = int(stats_groups.max()) + 1 if stats_groups.numel() else 0
    loss, stats = _FusedLinearShapedLoss.apply(
        flat_hidden,
        weight,
        bias,
        flat_labels,
        rows,
        config,
        num_items_in_batch,
        reduction,
        chunk_size,
        logit_scale,
        softcap,
        return_stats,
        stats_groups,
        num_groups,
        torch.is_grad_enabled(),
        _matmul_dtype(weight),
    )
    if not return_stats:
        return loss
    return loss, {name: stats[..., i] for i, name in enumerate((*STAT_NAMES, "num_tokens"))}
