"""fused_linear_shaped_loss against shaped_loss on the projected logits: loss, the three gradients, diagnostics."""

import dataclasses

import pytest
import torch

from trl_shaped import PAPER_PRESETS, ShapingConfig, distribution_stats, fused_linear_shaped_loss, shaped_loss
from trl_shaped.fused_loss import default_chunk_size

CONFIGS = [
    pytest.param(dataclasses.replace(PAPER_PRESETS[name], top_k=4, positive_form=form), id=f"{name}-{form}")
    for name in PAPER_PRESETS
    for form in ("power", "linear")
] + [pytest.param(ShapingConfig(beta=-0.5, top_k=4, head_reward=0.2, tail_reward=-0.3), id="mixed")]


def make_inputs(n=29, hidden=12, vocab=37, seed=0, dtype=torch.float64, bias=True, ignored=True):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) * 0.7).to(dtype).requires_grad_()
    b = (torch.randn(vocab, generator=gen, dtype=torch.float64) * 0.5).to(dtype).requires_grad_() if bias else None
    labels = torch.randint(0, vocab, (n,), generator=gen)
    if ignored:
        labels[::4] = -100
    return h, w, b, labels


def reference(h, w, b, labels, **kwargs):
    logits = h @ w.t() if b is None else h @ w.t() + b
    loss = shaped_loss(logits, labels, **kwargs)
    params = [t for t in (h, w, b) if t is not None and t.requires_grad]
    return loss, torch.autograd.grad(loss, params)


def fused(h, w, b, labels, **kwargs):
    loss = fused_linear_shaped_loss(h, w, labels, bias=b, **kwargs)
    params = [t for t in (h, w, b) if t is not None and t.requires_grad]
    return loss, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("chunk_size", [1, 5, None])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_shaped_loss_float64(config, chunk_size, with_bias):
    h, w, b, labels = make_inputs(bias=with_bias)
    loss_ref, grads_ref = reference(h, w, b, labels, config=config)
    loss, grads = fused(h, w, b, labels, config=config, chunk_size=chunk_size)
    # Tolerance 1e-11: float64 on both sides; the fused path uses closed forms (sum p log p, top-k mass) for what
    # the reference sums term by term, which reorders float64 additions only.
    torch.testing.assert_close(loss, loss_ref, rtol=1e-11, atol=1e-11)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("config", CONFIGS)
def test_matches_shaped_loss_float32(config):
    h, w, b, labels = make_inputs(n=64, hidden=32, vocab=500, dtype=torch.float32, seed=1)
    loss_ref, grads_ref = reference(h, w, b, labels, config=config)
    loss, grads = fused(h, w, b, labels, config=config, chunk_size=16)
    assert loss.dtype == torch.float32
    # Tolerance rtol 1e-5 / atol 1e-6: float32 (eps 1.2e-7) with sums over 500 classes and 48 tokens in a different
    # order (per chunk, closed forms) than the reference.
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_sum_reduction_num_items_and_3d_shapes():
    h, w, b, labels = make_inputs(n=24)
    config = dataclasses.replace(PAPER_PRESETS["tail_penalty"], top_k=4)
    h3, labels3 = h.reshape(2, 12, -1), labels.reshape(2, 12)
    for kwargs in ({"reduction": "sum"}, {"num_items_in_batch": 40}, {"num_items_in_batch": torch.tensor(40)}):
        loss_ref, grads_ref = reference(h3, w, b, labels3, config=config, **kwargs)
        loss, grads = fused(h3, w, b, labels3, config=config, chunk_size=7, **kwargs)
        # Tolerance 1e-11: float64, see test_matches_shaped_loss_float64.
        torch.testing.assert_close(loss, loss_ref, rtol=1e-11, atol=1e-11)
        for g, g_ref in zip(grads, grads_ref, strict=True):
            assert g.shape == g_ref.shape
            torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11)


def test_upstream_gradient_is_applied():
    h, w, b, labels = make_inputs()
    loss_ref = shaped_loss(h @ w.t() + b, labels, beta=0.5)
    grads_ref = torch.autograd.grad(3.5 * loss_ref, (h, w, b))
    loss = fused_linear_shaped_loss(h, w, labels, bias=b, beta=0.5, chunk_size=6)
    grads = torch.autograd.grad(3.5 * loss, (h, w, b))
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11)


def test_frozen_weight_and_no_grad():
    h, w, b, labels = make_inputs()
    w_frozen = w.detach()
    loss_ref, (g_ref,) = reference(h, w_frozen, None, labels, top_k=4, tail_reward=-0.1)
    loss, (g,) = fused(h, w_frozen, None, labels, top_k=4, tail_reward=-0.1, chunk_size=8)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11)
    with torch.no_grad():
        loss = fused_linear_shaped_loss(h, w, labels, bias=b, top_k=4, tail_reward=-0.1)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference(h, w, b, labels, top_k=4, tail_reward=-0.1)[0])


def test_all_ignored_is_a_differentiable_zero():
    h, w, b, labels = make_inputs(dtype=torch.float32)
    labels = torch.full_like(labels, -100)
    for config in PAPER_PRESETS.values():
        loss, stats = fused_linear_shaped_loss(h, w, labels, bias=b, config=config, return_stats=True)
        assert loss.item() == 0.0 and loss.requires_grad
        grads = torch.autograd.grad(loss, (h, w, b))
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
        assert all(v.item() == 0.0 for v in stats.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    h, w, b, labels = make_inputs(n=40, hidden=16, vocab=300, dtype=dtype, seed=2)
    config = dataclasses.replace(PAPER_PRESETS["tail_penalty"], top_k=10)
    loss, grads = fused(h, w, b, labels, config=config, chunk_size=8)
    assert loss.dtype == torch.float32
    assert [g.dtype for g in grads] == [dtype] * 3
    # Same low-precision logits (the model's lm_head would give them), then float32: the loss agrees to float32
    # rounding (rtol 1e-5; observed ~1e-7).
    torch.testing.assert_close(loss, shaped_loss(torch.addmm(b, h, w.t()), labels, config=config), rtol=1e-5, atol=0)
    # Against a float32 computation from the same inputs, the gradients differ by the low-precision logits and the
    # rounding of the logit gradient before the matmuls: max error <= 2% of the largest entry (bf16 has 8 bits of
    # mantissa, ~0.4%; observed 0.6% for bf16, 0.09% for fp16).
    hf, wf, bf = (t.detach().float().requires_grad_() for t in (h, w, b))
    ref = shaped_loss(torch.addmm(bf, hf, wf.t()), labels, config=config)
    for g, g_ref in zip(grads, torch.autograd.grad(ref, (hf, wf, bf)), strict=True):
        assert (g.float() - g_ref).abs().max() <= 2e-2 * g_ref.abs().max()


@pytest.mark.parametrize("name", list(PAPER_PRESETS))
def test_stats_equal_distribution_stats(name):
    h, w, b, labels = make_inputs(n=50, hidden=16, vocab=200, dtype=torch.float32, seed=3)
    config = dataclasses.replace(PAPER_PRESETS[name], top_k=7)
    loss, stats = fused_linear_shaped_loss(h, w, labels, bias=b, config=config, chunk_size=9, return_stats=True)
    expected = distribution_stats((h @ w.t() + b).detach(), labels, top_k=7, reduction="sum")
    assert set(stats) == set(expected)
    for key in expected:
        assert stats[key].dtype == torch.float32 and not stats[key].requires_grad
        # Tolerance rtol 1e-5 / atol 1e-5: float32 sums over 37 tokens from the same row formulas, other chunking.
        torch.testing.assert_close(stats[key], expected[key], rtol=1e-5, atol=1e-5, msg=key)
    # The loss is unchanged by asking for the stats.
    torch.testing.assert_close(loss, fused_linear_shaped_loss(h, w, labels, bias=b, config=config, chunk_size=9))


def test_stats_per_group_are_the_stats_of_each_group():
    h, w, b, labels = make_inputs(n=50, hidden=16, vocab=200, dtype=torch.float32, seed=4)
    groups = torch.arange(50) % 3  # group 2 left without scored tokens below
    labels = torch.where(groups == 2, -100, labels)
    config = dataclasses.replace(PAPER_PRESETS["tail_penalty"], top_k=7)
    _, stats = fused_linear_shaped_loss(h, w, labels, bias=b, config=config, chunk_size=9, return_stats=True,
                                        stats_groups=groups)  # fmt: skip
    for g in range(3):
        expected = distribution_stats(
            (h @ w.t() + b).detach(), torch.where(groups == g, labels, -100), top_k=7, reduction="sum"
        )
        for key in expected:
            assert stats[key].shape == (3,)
            torch.testing.assert_close(stats[key][g], expected[key], rtol=1e-5, atol=1e-5, msg=f"{key} of group {g}")


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_logit_scale_and_softcap_match_explicit(scale, softcap):
    h, w, b, labels = make_inputs(seed=4)
    config = ShapingConfig(beta=-0.25, top_k=4, tail_reward=-0.2)
    logits = (h @ w.t() + b) * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    loss_ref = shaped_loss(logits, labels, config=config)
    grads_ref = torch.autograd.grad(loss_ref, (h, w, b))
    loss = fused_linear_shaped_loss(
        h, w, labels, bias=b, config=config, chunk_size=6, logit_scale=scale, final_logit_softcapping=softcap
    )
    grads = torch.autograd.grad(loss, (h, w, b))
    # Tolerance 1e-11: float64 throughout (see test_matches_shaped_loss_float64).
    torch.testing.assert_close(loss, loss_ref, rtol=1e-11, atol=1e-11)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11)


def test_default_chunk_size_follows_memory_budget():
    assert default_chunk_size(10_000, 151_936, budget_bytes=64 * 2**20) == 96
    assert default_chunk_size(10_000, 32_000, budget_bytes=64 * 2**20) == 512
    assert default_chunk_size(7, 32_000) == 7
    assert default_chunk_size(10_000, 10**9) == 1


def test_bad_arguments_raise():
    h, w, b, labels = make_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_shaped_loss(h, w, labels, chunk_size=0)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_shaped_loss(h, w, labels, reduction="none")
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        fused_linear_shaped_loss(h, w, labels, final_logit_softcapping=0.0)
    with pytest.raises(ValueError, match="logit_scale"):
        fused_linear_shaped_loss(h, w, labels, logit_scale=float("nan"))
    with pytest.raises(ValueError, match="weight"):
        fused_linear_shaped_loss(h, w.t(), labels)
    with pytest.raises(ValueError, match="bias"):
        fused_linear_shaped_loss(h, w, labels, bias=b[:-1])
    with pytest.raises(ValueError, match="labels"):
        fused_linear_shaped_loss(h, w, torch.full_like(labels, 37))
    with pytest.raises(ValueError, match="top_k"):
        fused_linear_shaped_loss(h, w, labels, top_k=-1)


@pytest.mark.parametrize("name", list(PAPER_PRESETS))
def test_extreme_logits_stay_finite_and_match(name):
    h, w, _b, labels = make_inputs(n=20, hidden=8, vocab=30, dtype=torch.float32, seed=5)
    config = dataclasses.replace(PAPER_PRESETS[name], top_k=4)
    w_big = (w.detach().sign() * 1e4 / 8).requires_grad_()  # logits of order +-1e4
    h_sign = h.detach().sign().requires_grad_()
    loss_ref, grads_ref = reference(h_sign, w_big, None, labels, config=config)
    loss, grads = fused(h_sign, w_big, None, labels, config=config, chunk_size=6)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    # Tolerance rtol 1e-5 / atol 1e-3: float32 with logits of 1e4 (ulp 1e-3); the gradients are O(1e4) for W.
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-3)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-3)


def test_autocast_runs_the_matmul_in_the_autocast_dtype():
    h, w, b, labels = make_inputs(n=30, hidden=16, vocab=100, dtype=torch.float32, seed=6)
    config = dataclasses.replace(PAPER_PRESETS["tail_penalty"], top_k=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = fused(h, w, b, labels, config=config, chunk_size=7)
    assert loss.dtype == torch.float32 and [g.dtype for g in grads] == [torch.float32] * 3
    # The reference: bf16 logits (what autocast's lm_head gives), float32 loss; its gradients flow through the casts.
    hf, wf, bf = (t.detach().clone().requires_grad_() for t in (h, w, b))
    logits = torch.addmm(bf.bfloat16(), hf.bfloat16(), wf.bfloat16().t())
    ref = shaped_loss(logits, labels, config=config)
    grads_ref = torch.autograd.grad(ref, (hf, wf, bf))
    # Same bf16 logits, float32 loss: rtol 1e-5. Gradients: the reference rounds the logit gradient and the weight
    # gradient to bf16, the fused path keeps the weight's in float32: within 2% of the largest entry.
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=0)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert (g - g_ref.float()).abs().max() <= 2e-2 * g_ref.abs().max()
