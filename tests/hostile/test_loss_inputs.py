"""Hostile inputs to the losses: every accepted setting stays finite,
every bad one fails before any compute with a message that names the argument and its allowed range."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _sft_common import config as sft_config
from datasets import Dataset

from trl_shaped import ShapingConfig, distribution_stats, fused_linear_shaped_loss, shaped_loss
from trl_shaped.loss_core import positive_weight
from trl_shaped.sft_config import ShapedSFTConfig
from trl_shaped.sft_trainer import ShapedSFTTrainer
from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

BETAS = [-50.0, -1.5, -1.0, -0.99, -0.5, 0.0, 0.5, 50.0]
FORMS = ["power", "linear"]
# Target probabilities from 0 to 1; 0 is a -inf target logit, which has its own test below.
TARGET_PROBS = [1e-30, 0.5, 1 - 1e-7, 1.0]
VOCAB = 6


def accepted(beta):
    return beta >= -1.0


def logits_for_target_prob(p_y: float, dtype=torch.float32) -> torch.Tensor:
    """One row: logit 0 at the target (id 0), log((1 - p_y) / p_y) at id 1 and -200 elsewhere, so softmax gives p_y.

    Putting the rest of the mass on one token keeps 1 - 1e-7 representable in float32 (as 1 - 1.19e-7); p_y == 1
    puts every other token 200 below (float32 rounds p_y to exactly 1).
    """
    z = torch.full((VOCAB,), -200.0, dtype=torch.float64)
    z[0] = 0.0
    if p_y < 1.0:
        z[1] = math.log((1.0 - p_y) / p_y)
    return z.to(dtype)


def grid_batch(dtype=torch.float32):
    logits = torch.stack([logits_for_target_prob(p, dtype) for p in TARGET_PROBS])
    labels = torch.zeros(len(TARGET_PROBS), dtype=torch.long)
    return logits, labels


# --- the range of beta --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("beta", [b for b in BETAS if not accepted(b)])
def test_beta_below_minus_one_is_rejected_naming_beta_and_range(beta, form, tmp_path):
    with pytest.raises(ValueError) as info:
        ShapingConfig(beta=beta, positive_form=form)
    assert "beta" in str(info.value) and ">= -1" in str(info.value)
    logits, labels = grid_batch()
    with pytest.raises(ValueError, match="beta.*>= -1"):
        shaped_loss(logits, labels, beta=beta, positive_form=form)
    with pytest.raises(ValueError, match="beta.*>= -1"):
        fused_linear_shaped_loss(torch.eye(VOCAB)[:2], torch.eye(VOCAB), labels[:2], beta=beta, positive_form=form)
    with pytest.raises(ValueError, match="shaping_beta|beta.*>= -1"):
        ShapedSFTConfig(
            output_dir=str(tmp_path), shaping_beta=beta, shaping_positive_form=form, report_to="none", bf16=False
        )


CONFIGS = [
    pytest.param(ShapingConfig(beta=b, positive_form=f, top_k=k, head_reward=h, tail_reward=t), id=f"{b}-{f}-{name}")
    for b in BETAS
    if accepted(b)
    for f in FORMS
    for name, k, h, t in [("plain", 100, 0.0, 0.0), ("rewards", 2, 0.3, -0.4)]
]


@pytest.mark.parametrize("config", CONFIGS)
def test_every_accepted_beta_is_finite_for_target_probs_zero_to_one(config):
    logits, labels = grid_batch()
    # The grid really spans these p_y values (float32 rounds 1 - 1e-7 to 1 - 1.19e-7).
    p_y = logits.softmax(-1)[:, 0]
    assert p_y[0] < 1e-29 and abs(p_y[1] - 0.5) < 1e-6 and 0 < 1 - p_y[2] < 2e-7 and p_y[3] == 1.0

    z = logits.clone().requires_grad_()
    loss = shaped_loss(z, labels, config=config, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    # Bounded, not merely finite: the ground-truth term's logit-gradient components are at most about 1.2 at
    # beta >= -1 (the bound in ShapingConfig's docstring), plus the rewards' |r| p_a terms.
    assert grad.abs().max() < 2.0

    # The fused loss: the same logits as hidden @ I (weight = identity), so the logits are exactly those above.
    h = logits.clone().requires_grad_()
    weight = torch.eye(VOCAB, requires_grad=True)
    fused = fused_linear_shaped_loss(h, weight, labels, config=config, reduction="sum")
    g_h, g_w = torch.autograd.grad(fused, (h, weight))
    assert torch.isfinite(fused) and torch.isfinite(g_h).all() and torch.isfinite(g_w).all()
    # Against the reference on the same logits in float64. Near p_y = 1, float32 resolves log p_y only to ~1.2e-7
    # (the rounding of the softmax normaliser), and the loss and the target's gradient carry that error times w_y:
    # tolerance atol 1e-6 + 2.4e-7 * max w_y (1e-6 + 6.5e-7 for the power form, up to 0.24 where the linear form's
    # weight reaches its 1e6 cap). The float32 reference is not the yardstick there: its gradient p_y S - w_y
    # cancels, where the fused form p_y (S - w_y) - w_y (1 - p_y) does not.
    z64 = logits.double().requires_grad_()
    loss64 = shaped_loss(z64, labels, config=config, reduction="sum")
    (grad64,) = torch.autograd.grad(loss64, z64)
    w_max = positive_weight(z64.detach().log_softmax(-1)[:, 0], config).max().item()
    atol = 1e-6 + 2.4e-7 * w_max
    torch.testing.assert_close(fused.double(), loss64.detach(), rtol=1e-5, atol=atol)
    torch.testing.assert_close(g_h.double(), grad64, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("form", FORMS)
def test_gradient_norm_at_the_most_negative_beta_stays_bounded(form):
    # Unchecked, the linear form at beta = -50 gave an infinite gradient norm. Its smallest accepted beta is -1;
    # over many target probabilities near 1 the gradient norm stays below that of plain CE with p_y = 0.
    p = torch.tensor([1 - 10.0**-e for e in range(1, 8)] + [1.0])
    logits = torch.stack([logits_for_target_prob(float(x)) for x in p]).requires_grad_()
    labels = torch.zeros(len(p), dtype=torch.long)
    loss = shaped_loss(logits, labels, beta=-1.0, positive_form=form, reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(grad).all() and grad.norm(dim=-1).max() < 2.0


def tiny_trainer(tmp_path, **shaping):
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden_size=32, num_layers=1, seed=0)
    texts = [f"{a}+{b}={a + b}" for a in range(10) for b in (3, 17)]
    args = sft_config(tmp_path, max_steps=12, learning_rate=1e-2, **shaping)
    return ShapedSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tokenizer
    )


@pytest.mark.parametrize("form", FORMS)
def test_training_at_the_most_extreme_accepted_beta_keeps_weights_finite(tmp_path, form):
    # Unchecked, a run at shaping_beta=-2.0 reached a loss of 7.7e18 and NaN weights by step 9. At -1, a learning rate
    # of 1e-2 drives p_y towards 1 on this tiny data, which is where the weight would blow up.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = tiny_trainer(tmp_path, shaping_beta=-1.0, shaping_positive_form=form)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    norms = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses + norms)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # The run learns: the loss goes down (a NaN-zeroed or clipped-to-nothing run would not).
    assert losses[-1] < losses[0]


# --- -inf logits --------------------------------------------------------------------------------------------------


def masked_batch(n=8, vocab=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=gen) * 2
    labels = torch.randint(0, vocab, (n,), generator=gen)
    masked = torch.tensor([v for v in range(vocab) if v not in labels.tolist()][:3])
    logits[:, masked] = -math.inf  # padded vocabulary / constrained decoding: never a target
    return logits, labels, masked


def test_masked_column_defaults_equal_cross_entropy_bit_exact():
    logits, labels, masked = masked_batch()
    z = logits.clone().requires_grad_()
    loss = shaped_loss(z, labels, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), z)
    z_ref = logits.clone().requires_grad_()
    ref = F.cross_entropy(z_ref, labels, reduction="none")
    (grad_ref,) = torch.autograd.grad(ref.sum(), z_ref)
    assert torch.isfinite(ref).all()  # what the shaped losses are compared against
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=0)
    assert (grad[:, masked] == 0).all()


SHAPINGS = [
    pytest.param(ShapingConfig(beta=b, positive_form=f, top_k=k, head_reward=h, tail_reward=t), id=name)
    for name, b, f, k, h, t in [
        ("power", -0.25, "power", 100, 0.0, 0.0),
        ("power-1", -1.0, "power", 100, 0.0, 0.0),
        ("linear", -0.5, "linear", 100, 0.0, 0.0),
        ("diversity", 0.5, "power", 100, 0.0, 0.0),
        ("tail", 0.0, "power", 5, 0.0, -0.1),
        ("head", 0.0, "power", 5, 0.1, 0.0),
        # k larger than the number of finite tokens: K_t holds -inf tokens.
        ("head-k-over-finite", 0.0, "power", 29, 0.2, -0.3),
        ("mixed-linear", -1.0, "linear", 3, 0.2, -0.3),
    ]
]


@pytest.mark.parametrize("config", SHAPINGS)
def test_masked_column_is_finite_for_every_shaping_and_matches_dropping_it(config):
    logits, labels, masked = masked_batch()
    z = logits.clone().requires_grad_()
    loss = shaped_loss(z, labels, config=config, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), z)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and (grad[:, masked] == 0).all()
    # Independent check: a -inf token has p = 0, so the loss is that of the vocabulary without it (ids remapped).
    keep = torch.tensor([v for v in range(logits.shape[1]) if v not in masked.tolist()])
    remap = torch.full((logits.shape[1],), -1).index_put((keep,), torch.arange(len(keep)))
    top_k = min(config.top_k, len(keep))
    small = dataclasses.replace(config, top_k=top_k)
    z_small = logits[:, keep].clone().requires_grad_()
    ref = shaped_loss(z_small, remap[labels], config=small, reduction="none")
    (grad_small,) = torch.autograd.grad(ref.sum(), z_small)
    if config.top_k <= len(keep):  # K_t is the same set either way
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad[:, keep], grad_small, rtol=1e-6, atol=1e-6)

    # The fused loss: the realistic -inf is a bias column (masked vocabulary rows of the LM head).
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(8, 16, generator=gen, requires_grad=True)
    weight = torch.randn(30, 16, generator=gen, requires_grad=True)
    bias = torch.zeros(30)
    bias[masked] = -math.inf
    fused = fused_linear_shaped_loss(hidden, weight, labels, bias=bias, config=config, chunk_size=3)
    g_h, g_w = torch.autograd.grad(fused, (hidden, weight))
    assert torch.isfinite(fused) and torch.isfinite(g_h).all() and torch.isfinite(g_w).all()
    h2, w2 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref_full = shaped_loss(h2 @ w2.t() + bias, labels, config=config)
    r_h, r_w = torch.autograd.grad(ref_full, (h2, w2))
    # Tolerance: float32 closed form against autograd through log_softmax, O(1) values.
    torch.testing.assert_close(fused, ref_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_h, r_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_w, r_w, rtol=1e-5, atol=1e-6)
    assert (g_w[masked] == 0).all()


def test_fused_masked_bias_column_at_defaults_matches_cross_entropy():
    _, labels, masked = masked_batch()
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(8, 16, generator=gen, requires_grad=True)
    weight = torch.randn(30, 16, generator=gen, requires_grad=True)
    bias = torch.zeros(30)
    bias[masked] = -math.inf
    loss = fused_linear_shaped_loss(hidden, weight, labels, bias=bias)
    grads = torch.autograd.grad(loss, (hidden, weight))
    h2, w2 = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref = F.cross_entropy(h2 @ w2.t() + bias, labels)
    grads_ref = torch.autograd.grad(ref, (h2, w2))
    # Same float32 logits; the closed-form gradient p - onehot against autograd's: a few ulp.
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_distribution_stats_with_masked_columns_are_finite_and_correct():
    logits, labels, masked = masked_batch()
    stats = distribution_stats(logits, labels, top_k=5, reduction="none")
    assert all(torch.isfinite(v).all() for v in stats.values())
    keep = torch.tensor([v for v in range(logits.shape[1]) if v not in masked.tolist()])
    p = logits[:, keep].double().softmax(-1)
    torch.testing.assert_close(stats["entropy"].double(), -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-6)
    remap = torch.full((logits.shape[1],), -1).index_put((keep,), torch.arange(len(keep)))
    ref = distribution_stats(logits[:, keep], remap[labels], top_k=5, reduction="none")
    for name in ref:
        torch.testing.assert_close(stats[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_masked_target_gives_infinite_loss_like_cross_entropy():
    # Decision: match F.cross_entropy (an infinite loss and its finite gradient p - onehot), not raise: raising would
    # need a device sync per step, and a target the model is told can never occur is the caller's data error.
    logits, labels, masked = masked_batch()
    labels[0] = masked[0]
    for config in (ShapingConfig(), ShapingConfig(beta=-0.5), ShapingConfig(beta=0.5, top_k=5, tail_reward=-0.1)):
        z = logits.clone().requires_grad_()
        loss = shaped_loss(z, labels, config=config, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), z)
        assert loss[0].item() == math.inf and torch.isfinite(loss[1:]).all() and torch.isfinite(grad).all()
        if config.is_cross_entropy:
            z_ref = logits.clone().requires_grad_()
            ref = F.cross_entropy(z_ref, labels, reduction="none")
            (grad_ref,) = torch.autograd.grad(ref.sum(), z_ref)
            assert ref[0].item() == math.inf
            torch.testing.assert_close(grad, grad_ref, rtol=0, atol=0)
        # Fused: logits = one-hot rows + a bias that masks the same columns.
        hidden, weight = torch.eye(30)[:8].requires_grad_(), torch.eye(30).requires_grad_()
        bias = torch.zeros(30).index_fill(0, masked, -math.inf)
        fused = fused_linear_shaped_loss(hidden, weight, labels, bias=bias, config=config, reduction="sum")
        g_h, g_w = torch.autograd.grad(fused, (hidden, weight))
        assert fused.item() == math.inf and torch.isfinite(g_h).all() and torch.isfinite(g_w).all()


# --- bad arguments to the losses ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [ShapingConfig(), ShapingConfig(beta=-0.5, top_k=3, tail_reward=-0.2)])
def test_fused_backward_twice_with_retain_graph_gives_the_same_gradients(config):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 8, generator=gen, requires_grad=True)
    weight = torch.randn(20, 8, generator=gen, requires_grad=True)
    labels = torch.randint(0, 20, (10,), generator=gen)
    loss = fused_linear_shaped_loss(hidden, weight, labels, config=config, chunk_size=4)
    loss.backward(retain_graph=True)
    first = (hidden.grad.clone(), weight.grad.clone())
    loss.backward()
    # Accumulated twice: exactly double (the second backward reads the same saved gradients).
    assert torch.equal(hidden.grad, 2 * first[0]) and torch.equal(weight.grad, 2 * first[1])
    ref = shaped_loss(hidden @ weight.t(), labels, config=config)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    for g, g_ref in zip(first, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
    # Without retain_graph, a second backward is autograd's own clear error.
    loss = fused_linear_shaped_loss(hidden, weight, labels, config=config)
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


@pytest.mark.parametrize("bad", [0, -1, -5.0, torch.tensor(0), torch.tensor(-2), math.nan, True, "8"])
def test_num_items_in_batch_zero_or_negative_raises_in_both_losses(bad):
    logits, labels, _ = masked_batch()
    with pytest.raises(ValueError, match="num_items_in_batch"):
        shaped_loss(logits, labels, num_items_in_batch=bad)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        fused_linear_shaped_loss(torch.eye(30)[:8], torch.eye(30), labels, num_items_in_batch=bad)


def test_num_items_in_batch_zero_is_accepted_for_an_all_ignored_batch():
    # A gradient-accumulation window where every label is ignored counts 0 items; its loss is 0, not an error.
    logits = torch.randn(3, 30, requires_grad=True)
    labels = torch.full((3,), -100)
    for n in (0, torch.tensor(0)):
        assert shaped_loss(logits, labels, num_items_in_batch=n).item() == 0.0
        assert fused_linear_shaped_loss(logits, torch.eye(30), labels, num_items_in_batch=n).item() == 0.0


@pytest.mark.parametrize("as_numpy", [np.float32, np.float64])
def test_numpy_numbers_are_accepted_like_python_numbers(as_numpy):
    logits, labels, _ = masked_batch()
    plain = {"beta": -0.25, "head_reward": 0.5, "tail_reward": -0.25}  # exact in float32
    numpy_kwargs = {k: as_numpy(v) for k, v in plain.items()}
    config = ShapingConfig(top_k=np.int64(4), **numpy_kwargs)
    assert config == ShapingConfig(top_k=4, **plain) and type(config.top_k) is int and type(config.beta) is float
    expected = shaped_loss(logits, labels, top_k=4, **plain)
    assert torch.equal(shaped_loss(logits, labels, top_k=np.int64(4), **numpy_kwargs), expected)
    h, w = torch.eye(30)[:8], torch.eye(30)
    fused = fused_linear_shaped_loss(
        h, w, labels, top_k=np.int64(4), logit_scale=as_numpy(2.0), chunk_size=np.int64(3), **numpy_kwargs
    )
    assert torch.equal(fused, fused_linear_shaped_loss(h, w, labels, top_k=4, logit_scale=2.0, chunk_size=3, **plain))
    stats = distribution_stats(logits, labels, top_k=np.int64(4))
    expected_stats = distribution_stats(logits, labels, top_k=4)
    assert all(torch.equal(stats[k], expected_stats[k]) for k in expected_stats)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"beta": np.bool_(True)}, "beta"),
        ({"beta": True}, "beta"),
        ({"beta": np.float64("nan")}, "beta"),
        ({"head_reward": np.float32("inf")}, "head_reward"),
        ({"tail_reward": "0.1"}, "tail_reward"),
        ({"top_k": np.float64(3.0)}, "top_k"),
        ({"top_k": np.bool_(True)}, "top_k"),
    ],
)
def test_numpy_bools_nan_inf_and_strings_are_still_rejected(kwargs, name):
    logits, labels, _ = masked_batch()
    with pytest.raises(ValueError, match=name):
        shaped_loss(logits, labels, **kwargs)
    with pytest.raises(ValueError, match=name):
        fused_linear_shaped_loss(torch.eye(30)[:8], torch.eye(30), labels, **kwargs)


@pytest.mark.parametrize("softcap", [True, False, 0.0, -1.0, math.inf, "30"])
def test_final_logit_softcapping_rejects_bools_and_non_positive(softcap):
    labels = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="final_logit_softcapping.*> 0"):
        fused_linear_shaped_loss(torch.eye(4)[:2], torch.eye(4), labels, final_logit_softcapping=softcap)
