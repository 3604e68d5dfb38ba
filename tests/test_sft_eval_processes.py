"""ShapedSFTTrainer's eval diagnostics do not depend on the number of processes (an odd eval set over 2)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _sft_common import odd_eval_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.distributed
def test_eval_diagnostics_on_two_processes_equal_one(tmp_path):
    out = tmp_path / "two" / "metrics.json"
    out.parent.mkdir()
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "accelerate_configs" / "cpu.yaml"), "--main_process_port", "29531",
        str(ROOT / "tests" / "launch" / "sft_eval.py"), str(out),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    two = json.loads(out.read_text())
    torch.set_num_threads(1)
    one = odd_eval_metrics(tmp_path / "one")
    names = ("nll", "perplexity", "entropy", "topk_entropy", "topk_mass", "tail_mass", "target_prob",
             "target_in_topk", "mean_token_accuracy")  # fmt: skip
    for name in names:
        assert two[f"eval_{name}"] == pytest.approx(one[f"eval_{name}"], rel=1e-6), name
