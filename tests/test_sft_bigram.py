"""The presets shape the learnt distribution as docs/method.md section 4 says, at equal likelihood.

Pre-training on sequences of a random bigram model whose rows are Dirichlet(0.3): every next-token distribution is
skewed and uncertain, which is where the presets can differ (on deterministic or uniform next tokens they cannot).
Same seed, data and initialisation for every preset; measured on held-out sequences.
"""

import numpy as np
import pytest
from _sft_common import config, tokenizer
from datasets import Dataset

from trl_shaped.sft_trainer import ShapedSFTTrainer
from trl_shaped.tiny import build_tiny_model

VOCAB, LENGTH, TOP_K, FIRST_ID = 32, 48, 4, 4  # token ids start after the tokenizer's 4 special tokens


def bigram_corpus(seed: int = 0) -> tuple[Dataset, Dataset]:
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet([0.3] * VOCAB, size=VOCAB)

    def sample(n):
        seqs = np.zeros((n, LENGTH), dtype=np.int64)
        seqs[:, 0] = rng.integers(0, VOCAB, n)
        for t in range(1, LENGTH):
            cumulative = transitions[seqs[:, t - 1]].cumsum(1)
            seqs[:, t] = (cumulative < rng.random((n, 1))).sum(1).clip(max=VOCAB - 1)
        return Dataset.from_dict({"input_ids": (seqs + FIRST_ID).tolist()})

    return sample(1024), sample(64)


@pytest.mark.slow
def test_presets_order_entropy_and_tail_mass_at_equal_nll(tmp_path):
    train, held_out = bigram_corpus()
    tok = tokenizer()
    results = {}
    for preset in ("ce", "precision", "diversity", "tail_penalty"):
        model = build_tiny_model(VOCAB + FIRST_ID, tokenizer=tok, hidden_size=32, num_layers=1, seed=0)
        args = config(
            tmp_path,
            max_steps=300,
            per_device_train_batch_size=16,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
            shaping_preset=preset,
            shaping_top_k=TOP_K,
            per_device_eval_batch_size=64,
            logging_steps=300,
        )
        trainer = ShapedSFTTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=held_out, processing_class=tok
        )
        trainer.train()
        results[preset] = trainer.evaluate()
    entropy = {p: m["eval_entropy"] for p, m in results.items()}
    print({p: {k: round(m[f"eval_{k}"], 4) for k in ("entropy", "nll", "tail_mass")} for p, m in results.items()})  # noqa: T201 (the measured table, shown with -s)
    assert entropy["precision"] < entropy["ce"] < entropy["diversity"]
    assert results["tail_penalty"]["eval_tail_mass"] < results["ce"]["eval_tail_mass"]
    for preset, metrics in results.items():
        assert metrics["eval_nll"] == pytest.approx(results["ce"]["eval_nll"], rel=0.01), preset
