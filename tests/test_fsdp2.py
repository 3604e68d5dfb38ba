"""The shaped loss, the drift diagnostics, the prior and FSDP checkpoints with FSDP2-sharded parameters.

One launch of tests/launch/fsdp2_checks.py over 2 gloo CPU processes (torch's `fully_shard`, wrapped as accelerate's
FSDP2 plugin wraps a model, with the settings of accelerate_configs/fsdp2.yaml and fsdp2_offload.yaml; see
tests/_fsdp2_common.py for why no Trainer runs) against the same runs unsharded in this process. float32 throughout: the sharded runs differ only in how the gradients are summed.
"""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from _fsdp2_common import reference_adapter_drift, reference_drift, reference_sft, tiny

from trl_shaped.fsdp import check_fsdp_version

ROOT = Path(__file__).resolve().parents[1]
LOSS_RTOL = 1e-6
WEIGHT_ATOL = 1e-5


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2") / "result"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561"]
    proc = subprocess.Popen(
        [*command, str(ROOT / "tests" / "launch" / "fsdp2_checks.py"), str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield out, proc
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def result(launched):
    out, proc = launched
    # the unsharded references run while the launch does
    torch.set_num_threads(1)
    references = {
        "untied": reference_sft(tied=False),
        "tied": reference_sft(tied=True),
        "drift": reference_drift(),
        "adapter_drift": reference_adapter_drift(),
    }
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-4000:]
    return out, json.loads(Path(f"{out}.json").read_text()), references


@pytest.mark.distributed
@pytest.mark.parametrize("run_name", ["untied", "tied", "offload"])
def test_shaped_loss_with_sharded_parameters_matches_one_process(result, run_name):
    # untied and tied: accelerate_configs/fsdp2.yaml; offload: fsdp2_offload.yaml (parameters in CPU memory)
    out, sharded, references = result
    tied = "tied" if run_name == "tied" else "untied"
    run, reference = sharded[f"sft-{run_name}"], references[tied]
    assert run["head_sharded"], "the LM head should be a sharded DTensor outside the forward"
    assert run["losses"] == pytest.approx(reference["losses"], rel=LOSS_RTOL)
    # the head's gradient reached its shards: trained like the reference, far from where it started
    head = torch.load(f"{out}-sft-{run_name}.pt")
    torch.testing.assert_close(head, reference["lm_head"], rtol=0, atol=WEIGHT_ATOL)
    initial = tiny(tied=tied == "tied").get_output_embeddings().weight.detach()
    assert (reference["lm_head"] - initial).abs().max() > 100 * WEIGHT_ATOL


@pytest.mark.distributed
@pytest.mark.parametrize("state_dict_type", ["FULL_STATE_DICT", "SHARDED_STATE_DICT"])
def test_fsdp_checkpoint_resumes_the_run(result, state_dict_type):
    out, sharded, references = result
    # two steps, saved, loaded into a model started from other weights, one more step: the uninterrupted run
    assert sharded[f"resume-{state_dict_type}"]["losses"] == pytest.approx(
        references["untied"]["losses"], rel=LOSS_RTOL
    )
    head = torch.load(f"{out}-resume-{state_dict_type}.pt")
    torch.testing.assert_close(head, references["untied"]["lm_head"], rtol=0, atol=WEIGHT_ATOL)


@pytest.mark.distributed
def test_drift_statistics_with_sharded_heads_match_unsharded(result):
    _, sharded, references = result
    drift = sharded["drift"]
    assert drift["prior_sharded"], "prepare_frozen_prior should have sharded the prior (TRL's prepare_fsdp)"
    expected = references["drift"]
    assert expected[-1] == 10  # scored tokens, all on the first process
    assert expected[-2] > 0  # KL between two different models
    for sums in drift["sums"]:  # before any forward, and after one (accelerate's tail unit left gathered)
        torch.testing.assert_close(torch.tensor(sums), expected, rtol=1e-5, atol=1e-5)
    # a sharded LoRA policy against its own base, the adapters disabled for the prior
    expected = references["adapter_drift"]
    assert expected[-2] > 0 and expected[-1] == 10
    torch.testing.assert_close(torch.tensor(drift["adapter_sums"]), expected, rtol=1e-5, atol=1e-5)


def test_fsdp1_is_refused_with_the_fix():
    accelerator = types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=types.SimpleNamespace(fsdp_version=1)))
    with pytest.raises(ValueError, match=r"fsdp_version=1 .*fsdp_version: 2"):
        check_fsdp_version(accelerator)
    accelerator.state.fsdp_plugin.fsdp_version = 2
    check_fsdp_version(accelerator)
    check_fsdp_version(types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=None)))
