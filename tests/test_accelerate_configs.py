"""accelerate_configs/: every file parses with accelerate's own loader and says what its name promises; the cpu,
ZeRO-2 and ZeRO-3 ones launch a short recipe run on CPU (2 processes) that trains and saves a full model."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "accelerate_configs"
BATCH_SIZE = 8


def _check_cpu(c):
    # whether the two processes really start is for the launch test below to find out
    assert c.distributed_type in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    assert c.use_cpu and c.num_processes == 2


def _check_single_gpu(c):
    assert c.distributed_type == DistributedType.NO and c.num_processes == 1 and not c.use_cpu


def _check_multi_gpu(c):
    assert c.distributed_type == DistributedType.MULTI_GPU and c.num_processes > 1 and not c.use_cpu


def _check_zero(stage, offload="none"):
    def check(c):
        ds = c.deepspeed_config
        assert c.distributed_type == DistributedType.DEEPSPEED
        assert ds["zero_stage"] == stage
        assert ds["offload_optimizer_device"] == offload and ds["offload_param_device"] == offload
        if stage == 3:
            # the saved model must be whole, not this rank's partition
            assert ds["zero3_save_16bit_model"] is True

    return check


def _check_fsdp2(offload: bool):
    def check(c):
        fsdp = c.fsdp_config
        assert c.distributed_type == DistributedType.FSDP and not c.use_cpu
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_offload_params"] is offload
        # one unit per decoder layer; the saved model whole, loadable by the next stage
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"

    return check


def _check_multi_node(c):
    assert c.num_machines > 1 and c.num_processes % c.num_machines == 0
    assert c.main_process_ip and c.main_process_port and c.machine_rank == 0


EXPECTED = {
    "cpu": _check_cpu,
    "single_gpu": _check_single_gpu,
    "multi_gpu": _check_multi_gpu,
    "zero2": _check_zero(2),
    "zero3": _check_zero(3),
    "zero3_offload": _check_zero(3, offload="cpu"),
    "fsdp2": _check_fsdp2(offload=False),
    "fsdp2_offload": _check_fsdp2(offload=True),
    "multi_node": _check_multi_node,
}


def test_the_configs_are_the_expected_set():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_and_has_its_essential_fields(name):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.compute_environment.value == "LOCAL_MACHINE"
    EXPECTED[name](config)


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["cpu", "zero2", "zero3"])
def test_recipe_launches_on_cpu(name, tiny_run_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    output_dir = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{name}.yaml"),
        str(ROOT / "recipes" / "sft.py"), "--config", str(ROOT / "recipes" / "tiny_sft.yaml"),
        "--model_name_or_path", str(tiny_run_dir / "model"),
        "--dataset_data_files", f"train={tiny_run_dir / 'data' / 'sft.jsonl'}",
        "--max_steps", "2", "--per_device_train_batch_size", str(BATCH_SIZE), "--logging_steps", "1",
        "--output_dir", str(output_dir),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]

    # two processes each consumed BATCH_SIZE rows per step: the epoch counter says so
    num_rows = len((tiny_run_dir / "data" / "sft.jsonl").read_text().splitlines())
    epochs = [float(e) for e in re.findall(r"'epoch': '([0-9.e-]+)'", log)]
    assert epochs, log[-4000:]
    processes = epochs[-1] * num_rows / (2 * BATCH_SIZE)
    assert processes == pytest.approx(2, rel=0.02), f"{name}.yaml trained with {processes:g} processes, not 2"

    # the saved model is whole (ZeRO-3 gathers it), finite, and trained away from its initial weights
    initial = AutoModelForCausalLM.from_pretrained(tiny_run_dir / "model")
    trained = AutoModelForCausalLM.from_pretrained(output_dir)
    init_state, trained_state = initial.state_dict(), trained.state_dict()
    assert init_state.keys() == trained_state.keys()
    for key, value in trained_state.items():
        assert value.shape == init_state[key].shape, key
        assert torch.isfinite(value).all(), key
    assert any(not torch.equal(trained_state[k], init_state[k]) for k in init_state)
