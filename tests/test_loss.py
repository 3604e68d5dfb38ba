"""shaped_loss: gradients against an explicit expectation and finite differences, CE parity, edge cases."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from trl_shaped import PAPER_PRESETS, ShapingConfig, shaped_loss
from trl_shaped.loss import shaped_weights
from trl_shaped.loss_core import ONE_MINUS_P_FLOOR, topk_indices, topk_mask
from trl_shaped.tiny import build_tiny_model

SMALL_K = 3
CONFIGS = [
    pytest.param(dataclasses.replace(PAPER_PRESETS[name], top_k=SMALL_K, positive_form=form), id=f"{name}-{form}")
    for name in PAPER_PRESETS
    for form in ("power", "linear")
] + [pytest.param(ShapingConfig(beta=-0.5, top_k=SMALL_K, head_reward=0.2, tail_reward=-0.3), id="mixed")]


def explicit_weights(logits, labels, config):
    """docs/method.md section 3 written out directly (float64, sort-based top-k, no clamps), independent of the library."""
    p = logits.double().softmax(-1)
    # A stable descending sort keeps tied logits in index order: the lower index enters K_t first.
    order = torch.sort(logits.double(), dim=-1, descending=True, stable=True).indices
    head = torch.zeros_like(p, dtype=torch.bool).scatter(-1, order[:, : config.top_k], True)
    w = p * torch.where(head, p.new_tensor(config.head_reward), p.new_tensor(config.tail_reward))
    p_y = p.gather(-1, labels[:, None])
    if config.positive_form == "power":
        w_y = p_y ** (1 - (1 - p_y) ** config.beta)
    else:
        w_y = (1 - p_y) ** config.beta
    return w.scatter(-1, labels[:, None], w_y)


def random_batch(n=6, vocab=11, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 2).to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    return logits, labels


@pytest.mark.parametrize("config", CONFIGS)
def test_gradient_matches_explicit_expectation_and_finite_differences(config):
    logits, labels = random_batch()
    z = logits.clone().requires_grad_()
    loss = shaped_loss(z, labels, config=config)
    (grad,) = torch.autograd.grad(loss, z)

    w = explicit_weights(logits, labels, config)
    z_ref = logits.clone().requires_grad_()
    # Tolerance 1e-12: both sides are float64 and differ only by summation order.
    ref = -(w * F.log_softmax(z_ref, -1)).sum(-1).mean()
    (grad_ref,) = torch.autograd.grad(ref, z_ref)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)
    # The closed form of docs/method.md: dl/dz = -(w - p * sum w), averaged over rows.
    p = logits.softmax(-1)
    torch.testing.assert_close(grad, (p * w.sum(-1, keepdim=True) - w) / len(labels), rtol=1e-12, atol=1e-12)

    # Central differences of the surrogate with the weights frozen at the evaluation point (that is what sg means).
    # Tolerance 1e-8: float64 with step 1e-6 has truncation error ~1e-12 and cancellation error ~1e-10.
    def surrogate(x):
        return -(w * F.log_softmax(x, -1)).sum(-1).mean()

    eps = 1e-6
    steps = torch.eye(logits.numel(), dtype=logits.dtype).reshape(-1, *logits.shape) * eps
    fd = torch.stack([(surrogate(logits + s) - surrogate(logits - s)) / (2 * eps) for s in steps])
    torch.testing.assert_close(grad, fd.reshape(logits.shape), rtol=0, atol=1e-8)


@pytest.mark.parametrize("config", CONFIGS)
def test_float32_matches_float64_explicit(config):
    logits, labels = random_batch(n=16, vocab=40, seed=1)
    z = logits.float().requires_grad_()
    loss = shaped_loss(z, labels, config=config)
    (grad,) = torch.autograd.grad(loss, z)
    assert loss.dtype == torch.float32
    w = explicit_weights(logits, labels, config)
    ref = -(w * F.log_softmax(logits, -1)).sum(-1).mean()
    p = logits.softmax(-1)
    # Tolerance 1e-5 relative / 1e-6 absolute: float32 evaluation (eps 1.2e-7) of O(1) terms over 40 classes.
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), (p * w.sum(-1, keepdim=True) - w) / 16, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_defaults_equal_cross_entropy(reduction):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 33, 1000, generator=gen) * 3).requires_grad_()
    labels = torch.randint(0, 1000, (4, 33), generator=gen)
    labels[:, :5] = -100
    loss = shaped_loss(logits, labels, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    ref = F.cross_entropy(logits.reshape(-1, 1000), labels.reshape(-1), reduction=reduction)
    (grad_ref,) = torch.autograd.grad(ref.sum(), logits)
    # Per-token values and the gradient are the same float32 operations as PyTorch's (log_softmax, then -w . logp
    # with a one-hot w): bit-exact. The mean/sum of 112 tokens may add in another order: rtol 1e-6 (a few ulp).
    torch.testing.assert_close(loss.reshape(-1), ref.reshape(-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=0)


def test_num_items_in_batch_and_ce_parity():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 9, 50, generator=gen)
    labels = torch.randint(0, 50, (2, 9), generator=gen)
    labels[0, :4] = -100
    total = F.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1), reduction="sum")
    for n in (31, torch.tensor(31)):
        # Tolerance: rtol 1e-6, float32 sums of 14 terms in possibly another order.
        torch.testing.assert_close(shaped_loss(logits, labels, num_items_in_batch=n), total / 31, rtol=1e-6, atol=0)


@pytest.mark.parametrize("num_items", [None, 37])
def test_defaults_equal_transformers_causal_lm_loss(num_items):
    vocab = 97
    model = build_tiny_model(vocab, architecture="qwen3", hidden_size=32, num_layers=1, seed=0)
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (3, 12), generator=gen)
    labels = input_ids.clone()
    labels[0, :5] = -100
    labels[2, -3:] = -100
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    out = model(input_ids=input_ids, labels=labels, **kwargs)
    grads_ref = torch.autograd.grad(out.loss, [model.lm_head.weight, model.model.embed_tokens.weight])

    logits = model(input_ids=input_ids).logits
    ours = shaped_loss(logits[:, :-1], labels[:, 1:], num_items_in_batch=num_items)
    grads = torch.autograd.grad(ours, [model.lm_head.weight, model.model.embed_tokens.weight])
    # Tolerance rtol 1e-6 / atol 1e-7: the same float32 per-token values (bit-exact, see above); only the order of
    # the reduction over tokens may differ; the gradients flow back through identical weights.
    torch.testing.assert_close(ours, out.loss, rtol=1e-6, atol=1e-7)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-7)


def test_topk_ties_break_by_lower_index_deterministically():
    logits = torch.tensor(
        [
            [0.0, 1.0, 1.0, 1.0, 1.0, -1.0],  # four tokens tie for places 1-4, k = 2 takes ids 1 and 2
            [3.0, 1.0, 2.0, 2.0, 0.0, 2.0],  # 3.0 is in; ties at 2.0 for the 2nd place: id 2 wins
            [5.0, 5.0, 5.0, 5.0, 5.0, 5.0],  # all tied: ids 0, 1
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # no tie
        ]
    )
    expected = torch.tensor(
        [[0, 1, 1, 0, 0, 0], [1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(topk_mask(logits, 2), expected)
    labels = torch.tensor([0, 4, 5, 0])
    config = ShapingConfig(top_k=2, head_reward=0.3, tail_reward=-0.2)
    first = shaped_loss(logits, labels, config=config, reduction="none")
    for _ in range(3):
        assert torch.equal(shaped_loss(logits, labels, config=config, reduction="none"), first)
    expected_weights = explicit_weights(logits.double(), labels, config)
    torch.testing.assert_close(shaped_weights(logits.double(), labels, config), expected_weights, rtol=0, atol=1e-15)


@pytest.mark.parametrize("k_over", [0, 1, 50])
def test_top_k_at_least_vocab_makes_every_negative_a_head_token(k_over):
    logits, labels = random_batch(n=8, vocab=20, seed=2, dtype=torch.float32)
    loss = shaped_loss(logits, labels, top_k=20 + k_over, head_reward=0.1, tail_reward=-0.7, reduction="none")
    # Every negative gets head_reward: the same as a reward of 0.1 for head (k=1) and tail alike.
    same = shaped_loss(logits, labels, top_k=1, head_reward=0.1, tail_reward=0.1, reduction="none")
    torch.testing.assert_close(loss, same, rtol=0, atol=0)
    assert topk_mask(logits, 20 + k_over).all()


@pytest.mark.parametrize("form", ["power", "linear"])
@pytest.mark.parametrize("beta", [-0.25, -1.0])
def test_negative_beta_clamp_as_target_probability_reaches_one(form, beta):
    # p_y rounds to exactly 1 in float32 (the other logits are 200 below).
    logits = torch.tensor([[200.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    config = ShapingConfig(beta=beta, positive_form=form)
    w = shaped_weights(logits, labels, config)
    cap = ONE_MINUS_P_FLOOR**beta
    if form == "linear":
        torch.testing.assert_close(w[0, 0], torch.tensor(cap, dtype=torch.float32))
    else:
        # power: the limit of p_y ** (1 - (1 - p_y) ** beta) as p_y -> 1: 1 for beta > -1, e at beta = -1.
        assert w[0, 0].item() == pytest.approx(math.e if beta == -1.0 else 1.0, rel=1e-6)
    loss = shaped_loss(logits, labels, config=config)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # The saturated row's gradient is p * S - w with p == onehot: (S - w_y) at y, 0 elsewhere: all ~0.
    torch.testing.assert_close(grad[0], torch.zeros(4), rtol=0, atol=1e-4)


@pytest.mark.parametrize("config", CONFIGS)
def test_extreme_logits_stay_finite(config):
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randint(0, 2, (8, 30), generator=gen).float() * 2 - 1) * 1e4
    logits[:, 0] = 1e4 - 1.0
    logits = logits.requires_grad_()
    labels = torch.randint(0, 30, (8,), generator=gen)
    loss = shaped_loss(logits, labels, config=config)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    if config.is_cross_entropy:
        torch.testing.assert_close(loss, F.cross_entropy(logits.detach(), labels), rtol=1e-6, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_is_a_differentiable_zero(reduction):
    logits = torch.randn(2, 5, 13, requires_grad=True)
    labels = torch.full((2, 5), -100)
    for config in PAPER_PRESETS.values():
        loss = shaped_loss(logits, labels, config=config, reduction=reduction)
        assert torch.all(loss == 0) and loss.requires_grad
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.equal(grad, torch.zeros_like(logits))
    assert shaped_loss(logits, labels, num_items_in_batch=torch.tensor(0)) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["ce", "precision", "tail_penalty"])
def test_low_precision_inputs_compute_in_float32(dtype, name):
    logits, labels = random_batch(n=12, vocab=64, seed=4, dtype=dtype)
    config = dataclasses.replace(PAPER_PRESETS[name], top_k=5)
    low = logits.clone().requires_grad_()
    loss = shaped_loss(low, labels, config=config)
    (grad,) = torch.autograd.grad(loss, low)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    high = logits.float().requires_grad_()
    ref = shaped_loss(high, labels, config=config)
    (grad_ref,) = torch.autograd.grad(ref, high)
    # The loss is computed from the same (upcast) values: exact. The gradient differs only by its final rounding to
    # the input dtype.
    assert loss.item() == ref.item()
    torch.testing.assert_close(grad, grad_ref.to(dtype), rtol=0, atol=0)


def test_bad_arguments_raise():
    logits, labels = random_batch(n=3, vocab=7, dtype=torch.float32)
    with pytest.raises(ValueError, match="labels"):
        shaped_loss(logits, torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match="labels"):
        shaped_loss(logits, torch.tensor([0, -5, 1]))
    with pytest.raises(ValueError, match="reduction"):
        shaped_loss(logits, labels, reduction="max")
    with pytest.raises(ValueError, match="top_k"):
        shaped_loss(logits, labels, top_k=0)
    with pytest.raises(ValueError, match="beta"):
        shaped_loss(logits, labels, config=PAPER_PRESETS["precision"], beta=0.5)
    with pytest.raises(ValueError, match="labels"):
        shaped_loss(logits, labels[:2])
    # config= and matching loose kwargs are the same call.
    a = shaped_loss(logits, labels, config=PAPER_PRESETS["diversity"])
    b = shaped_loss(logits, labels, beta=0.5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("k", [1, 2, 5, 11, 12])
def test_topk_indices_equal_stable_sort_with_many_ties(k):
    # Integer logits in a small range: ties at the k-th place in most rows, some rows untied.
    gen = torch.Generator().manual_seed(k)
    logits = torch.randint(-3, 4, (64, 12), generator=gen).float()
    logits[:8] = torch.randn(8, 12, generator=gen)
    expected = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :k]
    expected_mask = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, expected, True)
    assert torch.equal(topk_mask(logits, k), expected_mask)
    assert torch.equal(torch.sort(topk_indices(logits, k), -1).values, torch.sort(expected, -1).values)


def test_topk_indices_with_bf16_rounded_logits():
    # bf16 logits (8-bit mantissa) tie often at the k-th place; the result must still be the stable-sort top-k.
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(40, 3000, generator=gen) * 2).bfloat16().float()
    expected = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :50]
    assert torch.equal(topk_mask(logits, 50), torch.zeros_like(logits, dtype=torch.bool).scatter(-1, expected, True))
