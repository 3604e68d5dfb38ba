"""Each piece of trl_shaped.loss_core alone, against an independent float64 torch computation."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trl_shaped import loss_core
from trl_shaped.loss_core import (
    MIN_BETA,
    ONE_MINUS_P_FLOOR,
    check_labels,
    check_num_items,
    check_reduction,
    chunk_logits,
    chunk_loss_and_grad,
    default_chunk_size,
    positive_weight,
    reduce_loss,
    row_terms,
    softmax_parts,
    stats_from_terms,
    topk_indices,
    topk_mask,
)

NEG_INF = -math.inf


def shaping(beta=0.0, top_k=3, head_reward=0.0, tail_reward=0.0, positive_form="power"):
    """A plain object with the attributes the core reads: the core does not need ShapingConfig."""
    return SimpleNamespace(
        beta=beta,
        top_k=top_k,
        head_reward=head_reward,
        tail_reward=tail_reward,
        positive_form=positive_form,
        needs_topk=head_reward != 0.0 or tail_reward != 0.0,
    )


def logits_with_masked_columns(n=9, vocab=13, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 2).to(dtype)
    z[:, 3] = NEG_INF
    z[1, 7:] = NEG_INF  # a row with several masked tokens, more than some top-k sizes leave finite
    labels = torch.randint(0, 3, (n,), generator=gen)
    return z, labels


def test_core_imports_only_the_validation_leaf():
    source = Path(loss_core.__file__).read_text()
    package_imports = [line for line in source.splitlines() if line.startswith("from .") or "trl_shaped" in line]
    assert package_imports == ["from .validation import check_choice, check_real"]
    validation = Path(loss_core.__file__).with_name("validation.py").read_text()
    assert "from ." not in validation and "import trl_shaped" not in validation


def test_check_num_items():
    assert check_num_items(None, 5) is None
    for good in (5, 5.0, np.int64(5), np.float32(5), torch.tensor(5), torch.tensor([5.0])):
        assert check_num_items(good, 3) == 5.0
    # 0 only for a batch with no scored token (gradient accumulation windows that are all padding).
    assert check_num_items(0, 0) == 0.0 and check_num_items(torch.tensor(0), 0) == 0.0
    for bad in (0, torch.tensor(0), -1, torch.tensor(-3.0), math.nan, math.inf, True, "4", torch.tensor([1, 2])):
        with pytest.raises(ValueError, match="num_items_in_batch"):
            check_num_items(bad, 4)


def test_check_labels_and_reduction():
    labels = torch.tensor([0, -100, 4, 2])
    assert torch.equal(check_labels(labels, 5, -100), torch.tensor([True, False, True, True]))
    for bad in (5, -1):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\).*ignore_index=-100"):
            check_labels(torch.tensor([0, bad]), 5, -100)
    check_reduction("sum")
    with pytest.raises(ValueError, match="reduction"):
        check_reduction("none", allowed=("mean", "sum"))


def test_softmax_parts_against_torch_with_masked_columns():
    z, _ = logits_with_masked_columns()
    shifted, unnorm, norm = softmax_parts(z)
    torch.testing.assert_close(unnorm / norm, z.softmax(-1), rtol=1e-14, atol=0)
    torch.testing.assert_close(shifted - norm.log(), z.log_softmax(-1), rtol=1e-14, atol=1e-14)
    assert (shifted <= 0).all() and (unnorm[:, 3] == 0).all()
    # inplace shifts the caller's buffer, out= receives the exponentials.
    buf, out = z.clone(), torch.empty_like(z)
    shifted2, unnorm2, _ = softmax_parts(buf, inplace=True, out=out)
    assert shifted2.data_ptr() == buf.data_ptr() and unnorm2.data_ptr() == out.data_ptr()
    assert torch.equal(unnorm2, unnorm)


@pytest.mark.parametrize("k", [1, 2, 4, 13, 20])
def test_topk_indices_equal_first_k_of_a_stable_sort(k):
    gen = torch.Generator().manual_seed(k)
    z = torch.randint(-2, 3, (50, 13), generator=gen).double()  # many ties at the k-th place
    z[:5, 6] = NEG_INF
    expected = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, : min(k, 13)]
    assert torch.equal(topk_mask(z, k), torch.zeros_like(z, dtype=torch.bool).scatter(-1, expected, True))
    assert topk_indices(z, k).shape == (50, min(k, 13))


BETAS = [-1.0, -0.99, -0.5, -0.25, 0.0, 0.5, 2.0, 50.0]


@pytest.mark.parametrize("form", ["power", "linear"])
@pytest.mark.parametrize("beta", BETAS)
def test_positive_weight_against_direct_formula(form, beta):
    p = torch.tensor([1e-30, 1e-6, 0.1, 0.5, 0.9, 0.999, 1 - 1e-5], dtype=torch.float64)
    w = positive_weight(p.log(), shaping(beta=beta, positive_form=form))
    if form == "power":
        expected = p ** (1 - (1 - p) ** beta)
    else:
        expected = torch.clamp(1 - p, min=ONE_MINUS_P_FLOOR if beta < 0 else 0.0) ** beta
    # float64, 1 - p from expm1 versus direct subtraction: agree to ~1e-11 relative at p = 1 - 1e-5.
    torch.testing.assert_close(w, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("form", ["power", "linear"])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_positive_weight_finite_and_bounded_at_the_ends(form, beta, dtype):
    logp = torch.tensor([NEG_INF, math.log(1e-30), -1e-7, -1e-12, 0.0], dtype=dtype)
    w = positive_weight(logp, shaping(beta=beta, positive_form=form))
    assert torch.isfinite(w).all() and (w >= 0).all()
    if form == "power":
        # The limits: w -> 1 as p -> 0; as p -> 1, w -> 1 (beta > -1) or e (beta = -1); never above e.
        assert w[0].item() == 1.0
        assert w[-1].item() == pytest.approx(math.e if beta == MIN_BETA else 1.0, rel=1e-6)
        assert w.max().item() <= math.e * (1 + 1e-6)
    elif beta < 0:
        assert w.max().item() <= ONE_MINUS_P_FLOOR**beta * (1 + 1e-6)


@pytest.mark.parametrize("form", ["power", "linear"])
def test_ground_truth_gradient_bound_of_the_beta_range(form):
    # ShapingConfig's docstring: at beta >= -1 each logit-gradient component of the ground-truth term, w_y (1 - p_y)
    # or w_y p_a <= w_y (1 - p_y), is at most about 1.2 in the power form (1.196 near p_y = 0.2 at beta = -1) and
    # at most 1 in the linear form.
    p_y = torch.linspace(1e-9, 1 - 1e-9, 200_001, dtype=torch.float64)
    peaks = {}
    for beta in (-1.0, -0.5, -0.25, 0.0, 0.5, 2.0):
        w = positive_weight(p_y.log(), shaping(beta=beta, positive_form=form))
        peaks[beta] = (w * (1 - p_y)).max().item()
    if form == "power":
        assert peaks[-1.0] == pytest.approx(1.1963, abs=1e-4)
        assert max(peaks.values()) == peaks[-1.0] < 1.2
    else:
        assert max(peaks.values()) <= 1.0 + 1e-12


def direct_terms(z, labels, k):
    """Per-row sums in float64 straight from softmax, with 0 log 0 = 0 written out."""
    p = z.double().softmax(-1)
    logp = z.double().log_softmax(-1)
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    head = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
    mass = p.gather(-1, head).sum(-1)
    return {
        "logp_y": logp.gather(-1, labels[:, None]).squeeze(-1),
        "p_y": p.gather(-1, labels[:, None]).squeeze(-1),
        "plogp": plogp.sum(-1),
        "topk_mass": mass,
        "topk_plogp": plogp.gather(-1, head).sum(-1),
        "target_in_topk": (head == labels[:, None]).any(-1).double(),
        "top1": (z.argmax(-1) == labels).double(),
    }


@pytest.mark.parametrize("k", [2, 8, 12])
def test_row_terms_and_stats_with_masked_tokens(k):
    z, labels = logits_with_masked_columns()
    terms = row_terms(*softmax_parts(z), labels, topk_indices(z, k))
    expected = direct_terms(z, labels, k)
    for name, value in expected.items():
        torch.testing.assert_close(getattr(terms, name), value, rtol=1e-12, atol=1e-12, msg=name)
    stats = stats_from_terms(terms)
    assert all(torch.isfinite(v).all() for v in stats.values())
    torch.testing.assert_close(stats["entropy"], -expected["plogp"], rtol=1e-12, atol=1e-12)
    q = torch.sort(z.softmax(-1), dim=-1, descending=True, stable=True).values[:, :k]
    q = q / q.sum(-1, keepdim=True)
    topk_entropy = -torch.where(q > 0, q * q.log(), torch.zeros_like(q)).sum(-1)
    torch.testing.assert_close(stats["topk_entropy"], topk_entropy, rtol=1e-10, atol=1e-12)


CHUNK_CONFIGS = [
    shaping(),
    shaping(beta=-0.5, positive_form="linear"),
    shaping(beta=-1.0),
    shaping(beta=0.5, top_k=2, head_reward=0.2, tail_reward=-0.3),
    shaping(top_k=12, tail_reward=-0.1),
]


@pytest.mark.parametrize("config", CHUNK_CONFIGS)
def test_chunk_loss_and_grad_against_autograd_of_the_surrogate(config):
    z, labels = logits_with_masked_columns()
    loss_rows, grad, stats = chunk_loss_and_grad(z.clone(), labels, config, want_grad=True, want_stats=True)
    # Independent: dense weights written out, loss -sum w log p with 0 * -inf = 0, gradient by autograd.
    p = z.softmax(-1)
    head = torch.zeros_like(z, dtype=torch.bool)
    head.scatter_(-1, torch.sort(z, dim=-1, descending=True, stable=True).indices[:, : config.top_k], True)
    rewards = torch.tensor([config.tail_reward, config.head_reward], dtype=torch.float64)
    w = p * rewards[head.long()]
    p_y = p.gather(-1, labels[:, None])
    if config.positive_form == "power":
        w_y = p_y ** (1 - (1 - p_y) ** config.beta)
    else:
        w_y = (1 - p_y) ** config.beta
    w = w.scatter(-1, labels[:, None], w_y)
    x = z.clone().requires_grad_()
    logp = x.log_softmax(-1)
    ref = -torch.where(w == 0, torch.zeros_like(logp), w * logp).sum(-1)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(loss_rows, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(grad).all() and (grad[:, 3] == 0).all()
    assert set(stats) == set(loss_core.STAT_NAMES)


def test_chunk_loss_and_grad_with_masked_target_is_cross_entropys():
    z, labels = logits_with_masked_columns()
    labels[0] = 3  # a -inf target
    loss_rows, grad, _ = chunk_loss_and_grad(z.clone(), labels, shaping(), want_grad=True, want_stats=False)
    x = z.clone().requires_grad_()
    ref = F.cross_entropy(x, labels, reduction="none")
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    assert loss_rows[0].item() == math.inf
    torch.testing.assert_close(loss_rows[1:], ref[1:].detach(), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-14, atol=0)


def test_reduce_loss():
    total = torch.tensor(6.0)
    assert reduce_loss(total, torch.tensor(3), "sum", 12.0).item() == 6.0
    assert reduce_loss(total, torch.tensor(3), "mean", None).item() == 2.0
    assert reduce_loss(total, torch.tensor(3), "mean", 12.0).item() == 0.5
    # Fractional divisors are divisors too (no hidden clamp to 1).
    assert reduce_loss(total, torch.tensor(3), "mean", 0.5).item() == 12.0
    zero = torch.tensor(0.0)
    assert reduce_loss(zero, torch.tensor(0), "mean", None).item() == 0.0
    assert reduce_loss(zero, torch.tensor(0), "mean", 0.0).item() == 0.0


def test_default_chunk_size():
    assert default_chunk_size(10_000, 151_936, budget_bytes=64 * 2**20) == 96
    assert default_chunk_size(5, 1000) == 5
    assert default_chunk_size(10_000, 10**9) == 1


@pytest.mark.parametrize("scale, softcap", [(1.0, None), (0.5, None), (2.0, 3.0)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunk_logits_against_explicit(scale, softcap, with_bias):
    gen = torch.Generator().manual_seed(0)
    h, w = torch.randn(6, 5, generator=gen), torch.randn(11, 5, generator=gen)
    b = torch.randn(11, generator=gen) if with_bias else None
    out = torch.empty(6, 11)
    chunk_logits(h, w, b, scale, softcap, out, None)
    expected = (h.double() @ w.double().t() + (0 if b is None else b.double())) * scale
    if softcap is not None:
        expected = torch.tanh(expected / softcap) * softcap
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    # A bf16 weight goes through the matmul buffer in its own dtype, then into the float32 output.
    out16 = torch.empty(6, 11)
    chunk_logits(
        h.bfloat16(),
        w.bfloat16(),
        None if b is None else b.bfloat16(),
        scale,
        softcap,
        out16,
        torch.empty(6, 11, dtype=torch.bfloat16),
    )
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16.double(), expected, rtol=5e-2, atol=5e-2)
