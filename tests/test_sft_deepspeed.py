"""ShapedSFTTrainer under DeepSpeed ZeRO-2 and ZeRO-3 with 2 CPU processes matches a single-process run.

One `accelerate launch` per stage (the repository's accelerate_configs/zero2.yaml and zero3.yaml), both started at
once; the single-process reference runs here meanwhile. Same model, data order and global batch of 4 (2 per process);
the tail-penalty loss with k = 5 so the shaped (not the CE) path is what runs. Each launch trains a model with a
separate LM head, then one with tied embeddings (where ZeRO-3 shares one sharded weight between two modules).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _sft_common import ZERO_VOCAB, tokenizer, zero_parity_run

from trl_shaped.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("zero2", "zero3")

# float32 throughout; the runs differ only in how the gradients are summed (all-reduce, ZeRO partitions), so they
# agree to rounding. Measured: relative loss difference ~1e-7, largest LM-head weight difference ~1e-6.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    procs = {}
    for stage in STAGES:
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ROOT / "accelerate_configs" / f"{stage}.yaml"),
            "--main_process_port",
            str(29511 + len(procs)),
            str(ROOT / "tests" / "launch" / "sft_zero.py"),
            str(out / stage / "result"),
        ]
        (out / stage).mkdir()
        procs[stage] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    yield out, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, launches):
    torch.set_num_threads(1)
    return {
        tied: zero_parity_run(tmp_path_factory.mktemp("single"), tie_word_embeddings=tied) for tied in (False, True)
    }


@pytest.mark.distributed
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_zero_matches_single_process(stage, tied, launches, reference):
    out, procs = launches
    log, _ = procs[stage].communicate(timeout=600)
    assert procs[stage].returncode == 0, log[-4000:]
    name = "tied" if tied else "untied"
    result = json.loads((out / stage / f"result-{name}.json").read_text())
    lm_head = torch.load(out / stage / f"result-{name}.pt")
    reference = reference[tied]

    assert len(result["losses"]) == 3
    assert result["losses"] == pytest.approx(reference["losses"], rel=LOSS_RTOL)
    # ZeRO-3 shards the head: the loss must have gathered it, and its gradient must have reached the shards (a lost
    # gradient leaves the head at its initial value, far from the reference's trained one)
    assert result["sharded"] == (stage == "zero3")
    torch.testing.assert_close(lm_head, reference["lm_head"], rtol=0, atol=WEIGHT_ATOL)
    initial = build_tiny_model(ZERO_VOCAB, tokenizer=tokenizer(), hidden_size=32, tie_word_embeddings=tied, seed=0)
    initial = initial.lm_head.weight.detach()
    assert (reference["lm_head"] - initial).abs().max() > 100 * WEIGHT_ATOL
