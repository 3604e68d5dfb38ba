"""drift.drift_sums (the GRPO drift diagnostics) against full logits, without a trainer."""

import pytest
import torch

from trl_shaped.drift import DRIFT_STATS, DRIFT_SUM_NAMES, HeadParams, drift_means, drift_sums


def full_log_softmax(hidden, head: HeadParams) -> torch.Tensor:
    z = hidden.double() @ head.weight.double().t()
    if head.bias is not None:
        z = z + head.bias.double()
    z = z * head.logit_scale
    if head.softcap is not None:
        z = torch.tanh(z / head.softcap) * head.softcap
    return z.log_softmax(-1)


def expected_sums(hidden_p, hidden_q, labels, head_p, head_q, k) -> dict[str, float]:
    out = {}
    logp = {}
    for name, hidden, head in (("policy", hidden_p, head_p), ("prior", hidden_q, head_q)):
        lp = full_log_softmax(hidden, head)
        logp[name] = lp
        p = lp.exp()
        top = p.topk(k, dim=-1).values
        mass = top.sum(-1)
        q = top / mass.unsqueeze(-1)
        out[f"{name}_entropy"] = -(p * lp).sum(-1).sum()
        out[f"{name}_topk_entropy"] = -(q * q.log()).sum(-1).sum()
        out[f"{name}_topk_mass"] = mass.sum()
        out[f"{name}_nll"] = -lp.gather(-1, labels[:, None]).sum()
    kl = torch.nn.functional.kl_div(logp["prior"], logp["policy"], log_target=True, reduction="sum")
    out["kl_to_prior"] = kl
    out["num_tokens"] = torch.tensor(float(labels.numel()))
    return {name: float(value) for name, value in out.items()}


def heads(vocab=37, hidden=8, bias=True, scale=1.0, softcap=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w_p = torch.randn(vocab, hidden, generator=g)
    w_q = w_p + 0.3 * torch.randn(vocab, hidden, generator=g)
    b = torch.randn(vocab, generator=g) if bias else None
    return (
        HeadParams(w_p.to(dtype), None if b is None else b.to(dtype), scale, softcap),
        HeadParams(w_q.to(dtype), None if b is None else (b + 0.1).to(dtype), scale, softcap),
    )


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 7])
@pytest.mark.parametrize("transform", [(1.0, None), (0.5, None), (2.0, 3.0)])
def test_drift_sums_match_full_logits(chunk_size, transform):
    scale, softcap = transform
    head_p, head_q = heads(scale=scale, softcap=softcap)
    torch.manual_seed(1)
    hidden_p, hidden_q = torch.randn(13, 8), torch.randn(13, 8)
    labels = torch.randint(0, 37, (13,))
    sums = drift_sums(hidden_p, hidden_q, labels, head_p, head_q, top_k=5, chunk_size=chunk_size)
    expected = expected_sums(hidden_p, hidden_q, labels, head_p, head_q, k=5)
    assert sums.dtype == torch.float32 and sums.shape == (len(DRIFT_SUM_NAMES),)
    for i, name in enumerate(DRIFT_SUM_NAMES):
        assert sums[i].item() == pytest.approx(expected[name], rel=1e-4, abs=1e-4), name
    means = drift_means(sums)
    assert set(means) == set(DRIFT_SUM_NAMES[:-1])
    assert means["kl_to_prior"] == pytest.approx(expected["kl_to_prior"] / 13, rel=1e-4)


def test_same_model_gives_zero_kl_and_equal_statistics():
    head_p, _ = heads(bias=False)
    hidden = torch.randn(6, 8)
    labels = torch.randint(0, 37, (6,))
    means = drift_means(drift_sums(hidden, hidden, labels, head_p, head_p, top_k=3))
    assert means["kl_to_prior"] == pytest.approx(0.0, abs=1e-6)
    for name in DRIFT_STATS:
        assert means[f"policy_{name}"] == pytest.approx(means[f"prior_{name}"], rel=1e-6)


def test_bf16_heads_compute_in_float32():
    head_p, head_q = heads(dtype=torch.bfloat16)
    hidden_p, hidden_q = torch.randn(5, 8), torch.randn(5, 8)
    labels = torch.randint(0, 37, (5,))
    sums = drift_sums(hidden_p, hidden_q, labels, head_p, head_q, top_k=4, chunk_size=2)
    # The logits are the bf16 matmul's, then float32: compare with full logits of the bf16-rounded hidden states
    expected = expected_sums(hidden_p.bfloat16(), hidden_q.bfloat16(), labels, head_p, head_q, k=4)
    assert sums.dtype == torch.float32
    assert sums[DRIFT_SUM_NAMES.index("kl_to_prior")].item() == pytest.approx(expected["kl_to_prior"], rel=5e-2)
    assert sums[0].item() == pytest.approx(expected["policy_entropy"], rel=1e-2)


def test_no_scored_token_gives_zero_sums():
    head_p, head_q = heads()
    empty = torch.zeros(0, 8)
    sums = drift_sums(empty, empty, torch.zeros(0, dtype=torch.long), head_p, head_q, top_k=3)
    assert torch.equal(sums, torch.zeros(len(DRIFT_SUM_NAMES)))
    assert all(value == 0.0 for value in drift_means(sums).values())
