"""ShapedGRPOTrainer under `accelerate launch` with DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes."""

import json
import os
import subprocess
import sys

import pytest

from trl_shaped.tiny import build_char_tokenizer, build_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    # DeepSpeed keeps parameters under 1e5 elements whole; a 4096-row head (32 wide) is one ZeRO-3 shards, so
    # generation and the drift diagnostics run with a really partitioned LM head.
    path = tmp_path_factory.mktemp("grpo_zero") / "policy"
    tokenizer = build_char_tokenizer()
    build_tiny_model(4096, hidden_size=32, num_layers=1, tokenizer=tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_short_run(policy_dir, tmp_path, stage):
    pytest.importorskip("deepspeed")
    out = tmp_path / "result.json"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(ROOT, "accelerate_configs", f"zero{stage}.yaml"),
        os.path.join(ROOT, "tests", "launch", "grpo_zero.py"), policy_dir, str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # The timeout also catches a collective that one process never enters (a hang)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    with open(out) as f:
        record = json.load(f)
    assert record["lm_head_sharded"] == (stage == 3)
    steps = [h for h in record["log_history"] if "loss" in h]
    assert len(steps) == 3
    # Diagnostics every step (diagnostics_steps=1), though one generation serves two steps (steps_per_generation=2)
    assert all("kl_to_prior" in h for h in steps)
    assert steps[0]["kl_to_prior"] == pytest.approx(0.0, abs=1e-6)
    assert steps[0]["policy_entropy"] == pytest.approx(steps[0]["prior_entropy"], abs=1e-5)
    assert steps[1]["kl_to_prior"] > 1e-4 and steps[2]["kl_to_prior"] > 1e-4
    # The drift statistics are chunked by the true vocabulary, sharded head or not (4 rows a chunk here); the first
    # step, where the last process had no scored token, finished on both processes
    chunks = record["drift_chunks"]
    assert chunks and all(c["vocab_size"] == 4096 and c["rows"] == min(4, c["num_tokens"]) for c in chunks)
    assert any(c["num_tokens"] > 4 for c in chunks)
    generated = [h for h in steps if "dynamic_sampling/rounds" in h]
    assert len(generated) == 2
    for h in generated:
        assert 0.0 <= h["dynamic_sampling/frac_groups_dropped"] <= 1.0
        assert 0 <= h["dynamic_sampling/rounds"] <= 2
        assert 0.0 <= h["dynamic_sampling/kept_reward_mean"] <= 1.0
    # The batches that dynamic sampling assembled across the two processes: whole groups (one prompt each), the
    # local size TRL expects, and as many uninformative groups as logged
    batches = record["batches"]
    assert len(batches) == len(generated)
    for batch, h in zip(batches, generated, strict=True):
        assert all(batch["same_prompt"]) and batch["local_rows"] == 4
        filled = 1 - sum(batch["informative"]) / len(batch["informative"])
        assert h["dynamic_sampling/frac_groups_filled"] == pytest.approx(filled)
    # The prior is TRL's reference (beta > 0): its KL term is 0 before the first update, positive after
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["kl"] > 0
    assert all("aux_shaped_loss" in h and h["aux_shaped_loss"] > 0 for h in steps)
