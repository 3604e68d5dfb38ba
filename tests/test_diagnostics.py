"""distribution_stats against a direct float64 computation of docs/method.md section 5."""

import math

import pytest
import torch

from trl_shaped import distribution_stats

KEYS = ("entropy", "topk_entropy", "topk_mass", "tail_mass", "target_prob", "target_in_topk", "top1_accuracy", "nll")


def direct_stats(logits, labels, k):
    """Per-row diagnostics written out term by term in float64 (sorted probabilities, explicit renormalisation)."""
    rows = []
    for z, y in zip(logits.double(), labels.tolist(), strict=True):
        p = z.softmax(-1)
        order = torch.sort(z, descending=True, stable=True).indices[:k]
        head = p[order]
        q = head / head.sum()
        rows.append(
            {
                "entropy": -sum(float(x) * math.log(float(x)) for x in p if x > 0),
                "topk_entropy": -sum(float(x) * math.log(float(x)) for x in q if x > 0),
                "topk_mass": float(head.sum()),
                "tail_mass": float(p.sum() - head.sum()),
                "target_prob": float(p[y]),
                "target_in_topk": float(y in order.tolist()),
                "top1_accuracy": float(int(torch.argmax(z)) == y),
                "nll": -float(torch.log_softmax(z, -1)[y]),
            }
        )
    return rows


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_matches_direct_computation(k):
    gen = torch.Generator().manual_seed(k)
    logits = torch.randn(3, 7, 40, generator=gen) * 2.5
    labels = torch.randint(0, 40, (3, 7), generator=gen)
    labels[1, 2:5] = -100
    # Make the target the argmax, and inside / outside the top-k, in a few rows.
    logits[0, 0, labels[0, 0]] = 20.0
    logits[2, 3, labels[2, 3]] = -20.0
    valid = labels != -100
    rows = direct_stats(logits[valid], labels[valid], k)
    stats = distribution_stats(logits, labels, top_k=k)
    sums = distribution_stats(logits, labels, top_k=k, reduction="sum")
    per_position = distribution_stats(logits, labels, top_k=k, reduction="none")
    assert sums["num_tokens"].item() == len(rows)
    for key in KEYS:
        expected = sum(r[key] for r in rows)
        # Tolerance rtol 1e-5 / atol 1e-5: float32 evaluation against float64, sums over <= 21 rows of O(1) values.
        torch.testing.assert_close(
            stats[key].double(), torch.tensor(expected / len(rows)).double(), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(sums[key].double(), torch.tensor(expected).double(), rtol=1e-5, atol=1e-5)
        expected_rows = torch.tensor([r[key] for r in rows], dtype=torch.float64)
        torch.testing.assert_close(per_position[key][valid].double(), expected_rows, rtol=1e-5, atol=1e-5)
        assert torch.all(per_position[key][~valid] == 0)
        assert stats[key].dtype == torch.float32


def test_ties_extreme_logits_and_low_precision():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0], [1e4, -1e4, 1e4, -1e4, 0.0], [-1e4, -1e4, -1e4, -1e4, -1e4]])
    labels = torch.tensor([3, 2, 4])
    stats = distribution_stats(logits, labels, top_k=2, reduction="none")
    rows = direct_stats(logits, labels, 2)
    for key in KEYS:
        assert torch.isfinite(stats[key]).all()
        # Tolerance atol 1e-6: float32 of quantities in [0, log 5].
        torch.testing.assert_close(
            stats[key].double(), torch.tensor([r[key] for r in rows]).double(), rtol=0, atol=1e-6
        )
    # Ties at the k-th place break towards the lower index: label 3 is left out of {1, 2}.
    assert stats["target_in_topk"][0] == 0.0
    half = distribution_stats(logits.bfloat16(), labels, top_k=2)
    full = distribution_stats(logits.bfloat16().float(), labels, top_k=2)
    assert all(torch.equal(half[key], full[key]) for key in KEYS)


def test_all_ignored_and_bad_arguments():
    logits = torch.randn(4, 9)
    labels = torch.full((4,), -100)
    stats = distribution_stats(logits, labels)
    assert all(v.item() == 0.0 for v in stats.values())
    assert distribution_stats(logits, labels, reduction="sum")["num_tokens"].item() == 0
    with pytest.raises(ValueError, match="top_k"):
        distribution_stats(logits, labels, top_k=0)
    with pytest.raises(ValueError, match="reduction"):
        distribution_stats(logits, labels, reduction="max")
    with pytest.raises(ValueError, match="labels"):
        distribution_stats(logits, torch.tensor([0, 1, 2, 9]))
